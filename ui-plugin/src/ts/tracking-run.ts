// One run of a tracker function over a list of frames: one call per frame for all objects,
// states carried from call to call, busy answers retried, lost states restarted.

import type { ShapeType, TrackerResults } from './cvat-core';
import { LOST_STATE, RETRYABLE, statusOf, trackingErrorMessage } from './errors';

/** A shape as the function takes and answers it (masks: CVAT's RLE + box). */
export interface TrackerShape {
    type: ShapeType;
    points: number[];
}

/** What a call sends per object in ``shapes``: a shape, and with frame numbers the call's
 * frame (``{type, frame}`` without points, with a state, continues the object onto that
 * frame; CVAT's relay checks every shape's type). */
type SentShape = (TrackerShape & { frame?: number }) | { type: ShapeType; frame: number };

/** One call through CVAT's relay: `shapes` starts objects on `frame`, `states` continues
 * them onto it, both together add keyframes (the relay fetches the frame and signs the
 * states; it passes shapes through as sent). */
export type CallFunction = (args: {
    frame: number;
    shapes?: SentShape[];
    states?: unknown[];
}) => Promise<TrackerResults>;

/** An object to track, from its shape on the start frame and its other keyframes. */
export interface StartObject {
    key: number;
    shape: TrackerShape;
    /** Other frames' shapes that condition it too (sent only with frame numbers). */
    keyframes?: { frame: number; shape: TrackerShape }[];
}

/** What the function answered on one frame: points per object key, null where the object
 * was lost there (it is tracked no further). */
export type FrameAnswers = Map<number, number[] | null>;

export interface RunHooks {
    cancelled: () => boolean;
    onFrame: (frame: number, answers: FrameAnswers) => void;
    onProgress: (message: string, percent: number) => void;
}

export interface RunOptions {
    functionName: string;
    /** Send frame numbers (the function then tracks by them and takes keyframes); off:
     * CVAT's plain protocol, each call the next frame of a fresh track. */
    frameNumbers: boolean;
    /** Further tries of a call answered 503/504/502/408, with pauses doubling from backoffMs. */
    retries: number;
    backoffMs: number;
    sleep: (ms: number) => Promise<void>;
    now: () => number;
}

export const DEFAULT_RUN_OPTIONS: Omit<RunOptions, 'functionName'> = {
    frameNumbers: false,
    retries: 4,
    backoffMs: 1000,
    sleep: (ms) => new Promise((resolve) => { setTimeout(resolve, ms); }),
    now: () => Date.now(),
};

/** A call that failed for good; its message is for the user. */
export class TrackingError extends Error {}

interface LiveObject {
    key: number;
    type: ShapeType;
    state: unknown;
    lastFrame: number;
    lastPoints: number[];
}

export interface RunSummary {
    /** Frames answered, in tracking order (a cancelled run stops between two frames). */
    frames: number[];
    cancelled: boolean;
    /** Objects started again from their last shape after their state was lost (404/410). */
    restarted: number;
}

export class TrackingRun {
    readonly #call: CallFunction;
    readonly #options: RunOptions;

    public constructor(call: CallFunction, options: Partial<RunOptions> & { functionName: string }) {
        this.#call = call;
        this.#options = { ...DEFAULT_RUN_OPTIONS, ...options };
    }

    /** Start ``objects`` on ``startFrame``, then track them onto each of ``frames`` in order
     * (increasing: forward, decreasing: backward). */
    public async run(startFrame: number, frames: number[], objects: StartObject[], hooks: RunHooks):
    Promise<RunSummary> {
        const summary: RunSummary = { frames: [], cancelled: false, restarted: 0 };
        if (objects.length === 0 || frames.length === 0) {
            return summary;
        }
        let live = await this.#keyframes(startFrame, objects);
        const began = this.#options.now();
        for (const [index, frame] of frames.entries()) {
            if (hooks.cancelled()) {
                summary.cancelled = true;
                break;
            }
            if (live.length === 0) {
                break;
            }
            hooks.onProgress(this.#progress(index, frames.length, live.length, began), (
                Math.floor((index / frames.length) * 100)));
            const answers = await this.#track(frame, live, summary);
            live = live.filter((object) => {
                const points = answers.get(object.key);
                if (points === null || points === undefined) {
                    return false;
                }
                object.lastFrame = frame;
                object.lastPoints = points;
                return true;
            });
            hooks.onFrame(frame, answers);
            summary.frames.push(frame);
        }
        hooks.onProgress(this.#progress(summary.frames.length, frames.length, live.length, began), 100);
        return summary;
    }

    /** Every object started, on its keyframes (first the other frames', in frame order,
     * then the start frame's: the function starts a run on the keyframe added last). */
    async #keyframes(startFrame: number, objects: StartObject[]): Promise<LiveObject[]> {
        const numbered = this.#options.frameNumbers;
        const states = new Map<number, unknown>();
        const keyed = (frame: number, entries: { key: number; shape: TrackerShape }[]) => (
            this.#keyframeCalls(frame, entries, states));
        if (numbered) {
            const frames = [...new Set(objects.flatMap((o) => (o.keyframes ?? []).map((k) => k.frame)))]
                .filter((frame) => frame !== startFrame).sort((a, b) => a - b);
            for (const frame of frames) {
                await keyed(frame, objects.flatMap((object) => (object.keyframes ?? [])
                    .filter((k) => k.frame === frame).map((k) => ({ key: object.key, shape: k.shape }))));
            }
        }
        await keyed(startFrame, objects.map((object) => ({ key: object.key, shape: object.shape })));
        return objects.map((object) => ({
            key: object.key,
            type: object.shape.type,
            state: states.get(object.key),
            lastFrame: startFrame,
            lastPoints: object.shape.points,
        }));
    }

    /** On ``frame``: objects without a state start there, the others get a keyframe (two
     * calls: CVAT's relay takes states for all of a call's objects or for none). */
    async #keyframeCalls(
        frame: number, entries: { key: number; shape: TrackerShape }[], states: Map<number, unknown>,
    ): Promise<void> {
        const sent = (shape: TrackerShape): SentShape => (
            this.#options.frameNumbers ? { ...shape, frame } : shape);
        const fresh = entries.filter((entry) => !states.has(entry.key));
        const known = entries.filter((entry) => states.has(entry.key));
        if (fresh.length) {
            const result = await this.#withRetries(frame, () => this.#call({
                frame, shapes: fresh.map((entry) => sent(entry.shape)),
            }));
            fresh.forEach((entry, index) => states.set(entry.key, result.states[index]));
        }
        if (known.length) {
            const result = await this.#withRetries(frame, () => this.#call({
                frame,
                shapes: known.map((entry) => sent(entry.shape)),
                states: known.map((entry) => states.get(entry.key)),
            }).catch((error: unknown) => {
                if (statusOf(error) === 400) {
                    throw new TrackingError(`Tracking stopped: ${this.#options.functionName} refused `
                        + `a keyframe on frame ${frame} (400): it may take no keyframes (DeAOT does `
                        + 'not): turn off "Use all keyframes of the object". Nothing was changed.');
                }
                throw error;
            }));
            known.forEach((entry, index) => states.set(entry.key, result.states[index]));
        }
    }

    #progress(done: number, total: number, objects: number, began: number): string {
        const seconds = (this.#options.now() - began) / 1000;
        const rate = done > 0 && seconds > 0 ? `, ${(done / seconds).toFixed(2)} frames/s` : '';
        return `Frame ${Math.min(done + 1, total)} of ${total}, ${objects} object${objects === 1 ? '' : 's'}${rate}`;
    }

    /** All live objects onto ``frame`` in one call; objects whose state was lost are started
     * again from their last shape. */
    async #track(frame: number, live: LiveObject[], summary: RunSummary): Promise<FrameAnswers> {
        try {
            return this.#continued(live, await this.#continue(frame, live));
        } catch (error) {
            if (!LOST_STATE.has(statusOf(error) ?? 0)) {
                throw this.#failure(frame, error);
            }
        }
        // Which objects were lost is not said (CVAT replaces the answer's body): each alone.
        const answers: FrameAnswers = new Map();
        for (const object of live) {
            let result: TrackerResults;
            try {
                result = await this.#continue(frame, [object]);
            } catch (error) {
                if (!LOST_STATE.has(statusOf(error) ?? 0)) {
                    throw this.#failure(frame, error);
                }
                const restart = new Map<number, unknown>();
                await this.#keyframeCalls(object.lastFrame,
                    [{ key: object.key, shape: { type: object.type, points: object.lastPoints } }], restart);
                object.state = restart.get(object.key);
                summary.restarted += 1;
                try {
                    result = await this.#continue(frame, [object]);
                } catch (again) {
                    throw this.#failure(frame, again);
                }
            }
            this.#continued([object], result).forEach((points, key) => answers.set(key, points));
        }
        return answers;
    }

    async #continue(frame: number, objects: LiveObject[]): Promise<TrackerResults> {
        const numbers = this.#options.frameNumbers
            ? { shapes: objects.map((object) => ({ type: object.type, frame })) } : {};
        return this.#withRetries(frame, () => this.#call({
            frame, states: objects.map((object) => object.state), ...numbers,
        }), true);
    }

    #continued(objects: LiveObject[], result: TrackerResults): FrameAnswers {
        const answers: FrameAnswers = new Map();
        objects.forEach((object, index) => {
            object.state = result.states[index];
            const shape = result.shapes[index];
            answers.set(object.key, shape ? shape.points : null);
        });
        return answers;
    }

    /** ``call`` tried again while it answers a retryable status. Lost states pass through
     * (``passLost``) for the caller to restart; anything else is the user's message. */
    async #withRetries(frame: number, call: () => Promise<TrackerResults>, passLost = false):
    Promise<TrackerResults> {
        for (let attempt = 1; ; attempt += 1) {
            try {
                return await call();
            } catch (error) {
                const status = statusOf(error) ?? 0;
                if (RETRYABLE.has(status) && attempt <= this.#options.retries) {
                    await this.#options.sleep(this.#options.backoffMs * 2 ** (attempt - 1));
                    continue;
                }
                if (passLost && LOST_STATE.has(status)) {
                    throw error;
                }
                throw this.#failure(frame, error, attempt);
            }
        }
    }

    #failure(frame: number, error: unknown, attempts = 1): TrackingError {
        if (error instanceof TrackingError) {
            return error;
        }
        return new TrackingError(trackingErrorMessage(this.#options.functionName, frame, error, attempts));
    }
}
