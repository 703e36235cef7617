"""Intel x64 architecture facts as data: VMCS fields, exit reasons, controls, MSRs."""
