/**
 * The lease state table, shared by the broker and the agents. For each state: the states it may
 * move to, which commands each agent accepts while a lease is in it, the broker's step from it, and
 * which step timeout bounds it (past that, another broker takes the lease over).
 *
 *   requested -> exporting -> exported -> attaching -> active -> draining -> released
 *        \\___________\\___________\\___________\\__________\\_________\\--> failed
 *   (draining -> active: the borrower refused the swap-off; exported -> draining: ended before attach)
 *
 * The broker moves leases only along `next` (services/broker/states.ts) and takes its steps only
 * from `step` (services/broker/reconciler.ts); an agent acts on a command only when the lease
 * record's state is listed for it, so a forged, replayed or late command changes nothing.
 */
import type { LeaseState } from './schemas.js';

export type Command = 'export' | 'unexport' | 'attach' | 'detach';

/**
 * The broker's step from a state:
 * - `reserve`: promise the bytes on the lender (by CAS on its record), then `exporting`;
 * - `export`: the lender creates the target, then `exported`;
 * - `advance`: `attaching`, or `draining` if an end was asked for meanwhile;
 * - `attach`: the borrower logs in and swaps on, then `active`;
 * - `watch`: nothing, unless the borrower went silent (`failed`) or an end was asked for (`draining`);
 * - `release`: the borrower swaps off (or refuses: back to `active`), the lender removes the target, then `released`;
 * - `none`: the lease has ended.
 */
export type Step = 'reserve' | 'export' | 'advance' | 'attach' | 'watch' | 'release' | 'none';

/** The step timeouts a state is bounded by: a lease in it longer than their sum (plus a grace) is stuck. */
export type Bound = 'export' | 'attach' | 'detach' | 'unexport';

interface StateRow {
  next: readonly LeaseState[];
  /** Commands an agent accepts for a lease in this state. */
  accepts: readonly Command[];
  step: Step;
  /** Empty for a state a lease may rest in (active, ended): no broker is mid-step there. */
  boundBy: readonly Bound[];
}

export const LEASE_STATES: Record<LeaseState, StateRow> = {
  requested: { next: ['exporting', 'failed'], accepts: [], step: 'reserve', boundBy: ['export'] },
  exporting: { next: ['exported', 'failed'], accepts: ['export'], step: 'export', boundBy: ['export'] },
  // 'export' again after it: a broker that took a lease over asks for the target and CHAP again.
  exported: { next: ['attaching', 'draining', 'failed'], accepts: ['export'], step: 'advance', boundBy: ['export', 'attach'] },
  attaching: { next: ['active', 'failed'], accepts: ['export', 'attach'], step: 'attach', boundBy: ['export', 'attach'] },
  active: { next: ['draining', 'failed'], accepts: [], step: 'watch', boundBy: [] },
  // The lender still refuses an unexport while a session is logged in, in every state.
  draining: { next: ['released', 'active', 'failed'], accepts: ['detach', 'unexport'], step: 'release', boundBy: ['detach', 'unexport'] },
  released: { next: [], accepts: ['detach', 'unexport'], step: 'none', boundBy: [] },
  failed: { next: [], accepts: ['detach', 'unexport'], step: 'none', boundBy: [] },
};

/** The states in which an agent accepts `command`. */
export function statesAccepting(command: Command): LeaseState[] {
  return (Object.keys(LEASE_STATES) as LeaseState[]).filter((state) => LEASE_STATES[state].accepts.includes(command));
}
