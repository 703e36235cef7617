/*
 * The smallest VMM that runs pyflank's KVM benchmark guests: the baseline
 * that pyflank's KVM backend is measured against (pyflank.backends.kvm.bench).
 *
 *   kvm_runner IMAGE STATE MODE PORT
 *
 * IMAGE  guest RAM, loaded at guest-physical 0 (its size is the RAM size)
 * STATE  struct kvm_sregs followed by struct kvm_regs, as KVM_SET_* take them
 * MODE   "vmcall": an OUT to PORT is a doorbell vmcall; answer VERSIONS
 *        (RDX=0 success, RBX=1 protocol version, RSI=R8=0) as pyflank's
 *        handler does.  "io": an OUT to PORT needs nothing but the exit.
 *
 * Runs until the guest's HLT; prints "exits N seconds S".  Registers travel
 * through kvm_run's sync-regs area, as in pyflank, so both pay the same
 * kernel costs and the difference is the VMM's own work.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void *load(const char *path, size_t *size, int anonymous)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    void *mem;

    if (fd < 0 || fstat(fd, &st) < 0)
        die(path);
    *size = (size_t)st.st_size;
    mem = mmap(NULL, *size, PROT_READ | PROT_WRITE,
               anonymous ? MAP_PRIVATE | MAP_ANONYMOUS : MAP_PRIVATE, anonymous ? -1 : fd, 0);
    if (mem == MAP_FAILED)
        die("mmap");
    if (anonymous && read(fd, mem, *size) != (ssize_t)*size)
        die("read");
    close(fd);
    return mem;
}

int main(int argc, char **argv)
{
    size_t ram_size, state_size;
    void *ram, *state;
    struct kvm_userspace_memory_region region;
    struct kvm_run *run;
    struct timespec t0, t1;
    unsigned long exits = 0;
    int kvm, vm, vcpu, mmap_size, vmcall;
    unsigned port;

    if (argc != 5) {
        fprintf(stderr, "usage: %s IMAGE STATE vmcall|io PORT\n", argv[0]);
        return 2;
    }
    vmcall = strcmp(argv[3], "vmcall") == 0;
    port = (unsigned)strtoul(argv[4], NULL, 0);
    ram = load(argv[1], &ram_size, 1);
    state = load(argv[2], &state_size, 0);
    if (state_size != sizeof(struct kvm_sregs) + sizeof(struct kvm_regs)) {
        fprintf(stderr, "STATE must be kvm_sregs + kvm_regs (%zu bytes)\n",
                sizeof(struct kvm_sregs) + sizeof(struct kvm_regs));
        return 2;
    }

    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);
    region = (struct kvm_userspace_memory_region){
        .slot = 0, .guest_phys_addr = 0, .memory_size = ram_size,
        .userspace_addr = (unsigned long)ram,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");
    if (ioctl(vcpu, KVM_SET_SREGS, state) < 0)
        die("KVM_SET_SREGS");
    if (ioctl(vcpu, KVM_SET_REGS, (char *)state + sizeof(struct kvm_sregs)) < 0)
        die("KVM_SET_REGS");
    run->kvm_valid_regs = KVM_SYNC_X86_REGS;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR)
                continue;
            die("KVM_RUN");
        }
        if (run->exit_reason == KVM_EXIT_HLT)
            break;
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != port) {
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            return 1;
        }
        exits++;
        if (vmcall) {
            struct kvm_regs *regs = &run->s.regs.regs;
            regs->rdx = 0;
            regs->rbx = 1;
            regs->rsi = 0;
            regs->r8 = 0;
            run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("exits %lu seconds %.9f\n", exits,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
