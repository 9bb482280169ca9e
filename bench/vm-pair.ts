/**
 * The testbed the VM benches compare the initiators on: one lender in a namespace (host-a, 2 GiB,
 * 256 MiB reserve) and two VMs of one make (same kernel, memory and image), the first attaching
 * with the kernel initiator, the second with the userspace one.
 */
import type { TestbedOptions } from '../cli/testbed/testbed.js';
import { MiB } from '../shared/units.js';

export const INITIATORS = ['kernel', 'userspace'] as const;
export type InitiatorName = (typeof INITIATORS)[number];

export function initiatorPair(dir: string, vmMiB: number, natsPort: number, extra: Partial<TestbedOptions> = {}): TestbedOptions {
  return { dir, hosts: 1, vmHosts: 2, vmInitiators: [...INITIATORS], vmMemoryMiB: vmMiB, natsPort, memoryBytes: [2048 * MiB], reserveBytes: [256 * MiB], ...extra };
}
