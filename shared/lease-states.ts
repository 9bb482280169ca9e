/**
 * The lease state table, shared by the broker and the agents: for each state, the states it may
 * move to, and which commands each agent accepts while a lease is in it. The broker moves leases
 * only along `next`; an agent acts on a command only when the lease record's state is listed for
 * it, so a forged, replayed or late command changes nothing.
 *
 *   requested -> exporting -> exported -> attaching -> active -> draining -> released
 *        \\___________\\___________\\___________\\__________\\_________\\--> failed
 *   (draining -> active: the borrower refused the swap-off; exported -> draining: released before attach)
 */
import type { LeaseState } from './schemas.js';

export type Command = 'export' | 'unexport' | 'attach' | 'detach';

interface StateRow {
  next: readonly LeaseState[];
  /** Commands an agent accepts for a lease in this state. */
  accepts: readonly Command[];
}

export const LEASE_STATES: Record<LeaseState, StateRow> = {
  requested: { next: ['exporting', 'failed'], accepts: [] },
  exporting: { next: ['exported', 'failed'], accepts: ['export'] },
  // 'export' again after it: a broker that took a lease over asks for the target and CHAP again.
  exported: { next: ['attaching', 'draining', 'failed'], accepts: ['export'] },
  attaching: { next: ['active', 'failed'], accepts: ['export', 'attach'] },
  active: { next: ['draining', 'failed'], accepts: [] },
  // The lender still refuses an unexport while a session is logged in, in every state.
  draining: { next: ['released', 'active', 'failed'], accepts: ['detach', 'unexport'] },
  released: { next: [], accepts: ['detach', 'unexport'] },
  failed: { next: [], accepts: ['detach', 'unexport'] },
};

/** The states in which an agent accepts `command`. */
export function statesAccepting(command: Command): LeaseState[] {
  return (Object.keys(LEASE_STATES) as LeaseState[]).filter((state) => LEASE_STATES[state].accepts.includes(command));
}
