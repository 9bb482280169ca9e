/**
 * The lease state machine. Every change of a lease record goes through `transition`, which refuses
 * an illegal step with the current state in the message, so a replayed or late message can never
 * move a lease backwards.
 */
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import type { LeaseRecord, LeaseState } from '../../shared/schemas.js';

const NEXT: Record<LeaseState, readonly LeaseState[]> = {
  requested: ['exporting', 'failed'],
  exporting: ['exported', 'failed'],
  exported: ['attaching', 'draining', 'failed'],
  attaching: ['active', 'failed'],
  active: ['draining', 'failed'],
  // A refused swap-off (the pages would not fit) puts the lease back to active.
  draining: ['released', 'active', 'failed'],
  released: [],
  failed: [],
};

export const TERMINAL: ReadonlySet<LeaseState> = new Set(['released', 'failed']);

export function isTerminal(state: LeaseState): boolean {
  return TERMINAL.has(state);
}

export function canTransition(from: LeaseState, to: LeaseState): boolean {
  return NEXT[from].includes(to);
}

/** Returns the lease moved to `to`, with `changes` applied and the step appended to its history. */
export function transition(
  lease: LeaseRecord,
  to: LeaseState,
  now: number,
  changes: Partial<Pick<LeaseRecord, 'target' | 'device' | 'initiator' | 'reason'>> = {},
): LeaseRecord {
  if (!canTransition(lease.state, to)) {
    throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${lease.id} is ${lease.state}; it cannot become ${to}`);
  }
  const reason = changes.reason;
  return {
    ...lease,
    ...changes,
    state: to,
    updatedAt: now,
    history: [...lease.history, { state: to, at: now, ...(reason ? { reason } : {}) }],
  };
}
