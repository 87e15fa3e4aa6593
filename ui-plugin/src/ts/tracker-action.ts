// One tracker function as CVAT's annotation action ("Run annotation action", Ctrl+E): its
// objects on the current frame are tracked frame by frame up to a target frame, forward or
// backward, in one call per frame through CVAT's own relay.

import type {
    ActionParameters, BaseCollectionActionClass, Collection, CollectionActionInput,
    CollectionActionOutput, Job, MLModel, ObjectState, ShapeType, TrackerResults,
} from './cvat-core';
import { TrackingOutput, visibleOn } from './objects';
import { type RunOptions, TrackingRun } from './tracking-run';

export const TARGET_FRAME = 'Target frame';
export const CONVERT_TO_TRACKS = 'Convert polygon shapes to tracks';
export const ALL_KEYFRAMES = 'Use all keyframes of the object';
/** What a tracker can follow from the annotation view (CVAT has no mask tracks). */
export const TRACKABLE: ShapeType[] = ['mask', 'polygon', 'rectangle'];

type Call = (taskID: number, model: MLModel, args: object) => Promise<TrackerResults>;

export interface TrackerActionOptions {
    model: MLModel;
    /** The name the action is listed under (the function's, made unique if needed). */
    name: string;
    call: Call;
    run?: Partial<RunOptions>;
}

/** The frames from ``current`` (excluded) to ``target`` (included) that the job has and that
 * are not deleted, in tracking order: increasing forward, decreasing backward. */
export async function framesToTrack(job: Job, current: number, target: number): Promise<number[]> {
    const numbers = (await job.frames.frameNumbers())
        .filter((n) => n !== current && n >= Math.min(current, target) && n <= Math.max(current, target))
        .sort((a, b) => (target >= current ? a - b : b - a));
    const frames: number[] = [];
    for (const number of numbers) {
        if (!(await job.frames.get(number)).deleted) {
            frames.push(number);
        }
    }
    return frames;
}

/** The action class for ``Base`` (``core.classes.BaseCollectionAction``: CVAT registers only
 * its subclasses). */
export function trackerActionClass(Base: BaseCollectionActionClass) {
    return class TrackerAction extends Base {
        readonly #options: TrackerActionOptions;
        readonly #types: Set<ShapeType>;
        #job: Job | null = null;
        #target = 0;
        #convert = false;
        #allKeyframes = true;

        public constructor(options: TrackerActionOptions) {
            super();
            this.#options = options;
            this.#types = new Set(TRACKABLE.filter((t) => options.model.supportedShapeTypes?.includes(t)));
        }

        public get model(): MLModel {
            return this.#options.model;
        }

        public override init(job: Job, parameters: Record<string, string | number>): Promise<void> {
            this.#job = job;
            this.#target = Number(parameters[TARGET_FRAME]);
            this.#convert = String(parameters[CONVERT_TO_TRACKS]) === 'true';
            this.#allKeyframes = String(parameters[ALL_KEYFRAMES] ?? 'true') !== 'false';
            return Promise.resolve();
        }

        public destroy(): Promise<void> {
            this.#job = null;
            return Promise.resolve();
        }

        public async run(input: CollectionActionInput): Promise<CollectionActionOutput> {
            const job = this.#job;
            const current = input.frameData.number;
            const nothing = { created: emptyCollection(), deleted: emptyCollection() };
            if (job === null || !Number.isInteger(this.#target) || this.#target === current) {
                return nothing;
            }
            const target = Math.min(Math.max(this.#target, job.startFrame), job.stopFrame);
            const frames = await framesToTrack(job, current, target);
            const startStates: ObjectState[] = await job.annotations.get(current, false, []);
            const output = new TrackingOutput(input.collection, await job.annotations.export(),
                startStates, { startFrame: current, convertShapesToTracks: this.#convert });
            const run = new TrackingRun(
                (args) => this.#options.call(job.taskId, this.#options.model, { ...args, job: job.id }),
                { functionName: this.#options.name, ...this.#options.run, frameNumbers: this.#allKeyframes },
            );
            const summary = await run.run(current, frames, output.startObjects(this.#allKeyframes), {
                cancelled: input.cancelled,
                onProgress: input.onProgress,
                onFrame: (frame, answers) => { output.record(frame, answers); },
            });
            // A cancelled run keeps what it tracked; a finished one covers every frame (also
            // those after all objects were lost: earlier output there is gone too).
            return output.finish(summary.cancelled ? summary.frames : frames);
        }

        public applyFilter({ collection, frameData }: Pick<CollectionActionInput, 'collection' | 'frameData'>):
        Collection {
            return {
                shapes: collection.shapes.filter(
                    (shape) => shape.frame === frameData.number && this.#types.has(shape.type),
                ),
                tags: [],
                tracks: collection.tracks.filter((track) => track.shapes.length > 0
                    && track.shapes[0].type !== 'mask' && this.#types.has(track.shapes[0].type)
                    && visibleOn(track, frameData.number)),
            };
        }

        public isApplicableForObject(state: ObjectState): boolean {
            return this.#types.has(state.shapeType) && !(state.objectType === 'track' && state.shapeType === 'mask');
        }

        public get name(): string {
            return this.#options.name;
        }

        public get parameters(): ActionParameters {
            return {
                [TARGET_FRAME]: {
                    type: 'number',
                    values: ({ instance }) => [instance.startFrame, instance.stopFrame, 1].map(String),
                    defaultValue: ({ instance }) => String(instance.stopFrame),
                },
                [CONVERT_TO_TRACKS]: {
                    type: 'checkbox',
                    values: ['true', 'false'],
                    defaultValue: 'false',
                },
                // Every shape a person drew of the object conditions it, as SAM 2's keyframes
                // do (frame numbers go to the function); off: a fresh track from this frame.
                [ALL_KEYFRAMES]: {
                    type: 'checkbox',
                    values: ['true', 'false'],
                    defaultValue: 'true',
                },
            };
        }
    };
}

function emptyCollection(): Collection {
    return { shapes: [], tags: [], tracks: [] };
}
