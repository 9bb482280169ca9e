/**
 * The lease state machine. Every change of a lease record goes through `transition`, which refuses
 * an illegal step (by the table in shared/lease-states.ts) with the current state in the message,
 * so a replayed or late message can never move a lease backwards.
 */
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import type { LeaseRecord, LeaseState } from '../../shared/schemas.js';
import { LEASE_STATES } from '../../shared/lease-states.js';

export const TERMINAL: ReadonlySet<LeaseState> = new Set(['released', 'failed']);

export function isTerminal(state: LeaseState): boolean {
  return TERMINAL.has(state);
}

export function canTransition(from: LeaseState, to: LeaseState): boolean {
  return LEASE_STATES[from].next.includes(to);
}

/** The history keeps the first step and the latest ones, this many in all; the rest are counted. */
export const HISTORY_LIMIT = 32;
/** A reason longer than this (an error with a long stderr, say) is cut. */
export const REASON_LIMIT = 500;

export function cutReason(reason: string): string {
  return reason.length <= REASON_LIMIT ? reason : `${reason.slice(0, REASON_LIMIT - 1)}…`;
}

/**
 * Appends a step to a lease's history, bounded: a lease that flaps (a swap-off refused again and
 * again) keeps its first step and its latest ones, and counts what it dropped, so its record stays
 * far under NATS's payload limit however long it lives.
 */
export function withStep(lease: LeaseRecord, step: LeaseRecord['history'][number]): Pick<LeaseRecord, 'history' | 'historyDropped'> {
  const history = [...lease.history, step.reason ? { ...step, reason: cutReason(step.reason) } : step];
  if (history.length <= HISTORY_LIMIT) return { history, ...(lease.historyDropped ? { historyDropped: lease.historyDropped } : {}) };
  const dropped = history.length - HISTORY_LIMIT;
  return { history: [history[0]!, ...history.slice(1 + dropped)], historyDropped: (lease.historyDropped ?? 0) + dropped };
}

/** Returns the lease moved to `to`, with `changes` applied and the step appended to its history. */
export function transition(
  lease: LeaseRecord,
  to: LeaseState,
  now: number,
  changes: Partial<Pick<LeaseRecord, 'target' | 'device' | 'initiator' | 'reason' | 'driver'>> = {},
): LeaseRecord {
  if (!canTransition(lease.state, to)) {
    throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${lease.id} is ${lease.state}; it cannot become ${to}`);
  }
  const reason = changes.reason === undefined ? undefined : cutReason(changes.reason);
  // An end asked for is acted on by draining (or moot once the lease has ended): it goes.
  const { end, ...rest } = lease;
  const keepEnd = end && to !== 'draining' && !isTerminal(to);
  return {
    ...rest,
    ...(keepEnd ? { end } : {}),
    ...changes,
    ...(reason === undefined ? {} : { reason }),
    state: to,
    updatedAt: now,
    ...withStep(lease, { state: to, at: now, ...(reason ? { reason } : {}) }),
  };
}
