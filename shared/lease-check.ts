/**
 * Agents act on a command only when the lease record in KV agrees with it: the lease exists, names
 * this host in the right role, and is in a state where the command makes sense. A forged or stale
 * command is refused with the reason and changes nothing.
 */
import type { KV } from '@nats-io/kv';
import { getParsed } from './kv.js';
import { ErrorCodes, RswapError, errorCode } from './errors.js';
import { LeaseRecord, type LeaseState } from './schemas.js';

export async function requireLease(
  kv: KV,
  leaseId: string,
  expect: { role: 'lender' | 'borrower'; host: string; states: readonly LeaseState[] },
): Promise<LeaseRecord> {
  const entry = await readLease(kv, leaseId);
  if (!entry) throw new RswapError(ErrorCodes.UNKNOWN_LEASE, `unknown lease '${leaseId}'`);
  const lease = entry.value;
  if (lease[expect.role] !== expect.host) {
    throw new RswapError(ErrorCodes.WRONG_HOST, `lease ${leaseId} has ${expect.role} '${lease[expect.role]}', this host is '${expect.host}'`);
  }
  if (!expect.states.includes(lease.state)) {
    throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${leaseId} is ${lease.state}; expected ${expect.states.join(' or ')}`);
  }
  return lease;
}

/** Read tries: an agent on a host thrashing on its own leases can miss one read's deadline. */
const READ_TRIES = 3;

async function readLease(kv: KV, leaseId: string) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await getParsed(kv, leaseId, LeaseRecord);
    } catch (error) {
      if (errorCode(error) !== ErrorCodes.TIMEOUT || attempt >= READ_TRIES) throw error;
    }
  }
}
