// What a tracker call's failure means for the annotator. CVAT's relay keeps the function's
// status code but replaces its body with its own text, so the status is all there is; the
// meanings are the function's (docs/protocol.md, "What users see").

import type { ServerErrorLike } from './cvat-core';

/** Statuses a retry of the same call may cure: the function or its store is busy or was
 * restarting (503), CVAT gave up waiting or could not reach it (502, 504, 408). A retried
 * call is safe: the function answers a repeated step from what it stored (a replay). */
export const RETRYABLE = new Set([408, 502, 503, 504]);

/** The object's memory is gone (expired after 8 hours unused, the store emptied) or
 * unreadable: start it again from its last shape. */
export const LOST_STATE = new Set([404, 410]);

const MEANINGS: Record<number, string> = {
    400: 'the function could not use a shape or the frame (an empty or malformed shape, or a '
        + 'frame of another size than the one the object was started on): redraw the object',
    401: 'CVAT refused the call: log in again',
    403: 'you may not run functions on this job',
    404: "the object's memory in the function expired (8 hours unused) or its store was "
        + 'emptied, and starting it again failed',
    409: 'the object was tracked past this frame by another run (another tab or user), or the '
        + 'function was redeployed with another model: go back to the latest tracked frame, '
        + 'or redraw the object',
    410: "the object's stored memory is damaged: redraw the object",
    413: 'too many objects in one call, or a frame too large: track fewer objects at once '
        + '(an administrator can raise SAM2_MAX_OBJECTS_PER_CALL)',
    500: "the function failed (its log says why); the function's worker stays up",
    503: "the function's memory store (Redis/Kvrocks) or the function is unavailable: retry in a "
        + 'moment',
};

export function statusOf(error: unknown): number | null {
    const code = (error as ServerErrorLike | null)?.code;
    return typeof code === 'number' ? code : null;
}

/** One message for the modal: what failed, where, and what to do. */
export function trackingErrorMessage(
    functionName: string, frame: number, error: unknown, attempts = 1,
): string {
    const status = statusOf(error);
    const where = `${functionName} on frame ${frame}`;
    const tries = attempts > 1 ? ` after ${attempts} tries` : '';
    if (status === null) {
        const text = error instanceof Error ? error.message : String(error);
        return `Tracking stopped: ${where} failed${tries} (${text}). Nothing was changed.`;
    }
    const meaning = MEANINGS[status]
        ?? (RETRYABLE.has(status) ? 'CVAT could not get an answer in time: retry'
            : 'unexpected answer');
    return `Tracking stopped: ${where} answered ${status}${tries}: ${meaning}. Nothing was changed.`;
}
