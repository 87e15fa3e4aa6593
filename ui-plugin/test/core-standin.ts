// A stand-in for the part of cvat-core the plugin uses, for its tests (Node and the browser
// page). CVAT's code cannot be committed or run here; this is written from CVAT 2.73's source,
// with the same method names, arguments and result shapes:
// - api.ts: `core.actions.{list, register, unregister, run, call}`, `core.lambda.{list, call}`,
//   `core.plugins.register`, `core.server.about`, `core.classes.BaseCollectionAction`;
// - plugins.ts (`PluginRegistry.apiWrapper`): a registered plugin's `enter` hook runs before
//   the wrapped call (here: `actions.list`);
// - annotations-actions/annotations-actions.ts: registration needs a `BaseAction` subclass and
//   a unique name;
// - annotations-actions/base-action.ts (`prepareActionParameters`): number parameters become
//   numbers, missing ones take their default;
// - annotations-actions/base-collection-action.ts: `run` (Ctrl+E with no object: the whole
//   collection through `applyFilter`, then `run`, then one `commit`) and `call` (one object's
//   exported state); the action is destroyed either way; a throw commits nothing;
// - annotations-collection.ts (`commit`): removed objects must exist (by clientID), appended
//   ones get new client IDs; one commit is one undo step;
// - session.ts: a job's `frames.get/frameNumbers`, `annotations.get/export`.
// What it leaves out: user annotation filters, and interpolation between track keyframes
// (`annotations.get` gives a track's last keyframe at or before the frame; the tests start
// tracks on keyframes).

import type {
    ActionParameters, Collection, CollectionActionInput, CollectionActionOutput, CorePlugin,
    FrameData, MLModel, ObjectState, SerializedShape, SerializedTrack, TrackerResults,
} from '../src/ts/cvat-core';

export class BaseAction {}
export class BaseCollectionAction extends BaseAction {}

interface ActionLike {
    name: string;
    parameters: ActionParameters | null;
    init: (job: StandInJob, parameters: Record<string, string | number>) => Promise<void>;
    destroy: () => Promise<void>;
    run: (input: CollectionActionInput) => Promise<CollectionActionOutput>;
    applyFilter: (input: Pick<CollectionActionInput, 'collection' | 'frameData'>) => Collection;
    isApplicableForObject: (state: ObjectState) => boolean;
}

/** CVAT's `ServerError`: the HTTP status in `code`. */
export class ServerError extends Error {
    public readonly code: number;

    public constructor(message: string, code: number) {
        super(message);
        this.code = code;
    }
}

function copy<T>(value: T): T {
    return JSON.parse(JSON.stringify(value)) as T;
}

function lastKeyframe(track: SerializedTrack, frame: number) {
    const before = track.shapes.filter((shape) => shape.frame <= frame);
    return before.length ? before.reduce((a, b) => (a.frame > b.frame ? a : b)) : null;
}

export class StandInJob {
    public readonly id: number;
    public readonly taskId: number;
    public readonly startFrame: number;
    public readonly stopFrame: number;
    public readonly width: number;
    public readonly height: number;
    public readonly deletedFrames: Set<number>;
    public commits = 0;
    #nextClientID = 1;
    #collection: Collection = { shapes: [], tags: [], tracks: [] };

    public constructor(options: {
        id: number; taskId: number; startFrame: number; stopFrame: number;
        width: number; height: number; deletedFrames?: number[]; annotations?: Partial<Collection>;
    }) {
        this.id = options.id;
        this.taskId = options.taskId;
        this.startFrame = options.startFrame;
        this.stopFrame = options.stopFrame;
        this.width = options.width;
        this.height = options.height;
        this.deletedFrames = new Set(options.deletedFrames ?? []);
        this.#import({ shapes: [], tags: [], tracks: [], ...options.annotations });
    }

    public readonly frames = {
        get: (frame: number): Promise<FrameData> => Promise.resolve({
            number: frame, width: this.width, height: this.height, deleted: this.deletedFrames.has(frame),
        }),
        frameNumbers: (): Promise<number[]> => Promise.resolve(
            Array.from({ length: this.stopFrame - this.startFrame + 1 }, (_, i) => this.startFrame + i),
        ),
    };

    public readonly annotations = {
        get: (frame: number): Promise<ObjectState[]> => Promise.resolve(this.statesOn(frame)),
        export: (): Promise<Collection> => Promise.resolve(copy(this.#collection)),
        commit: (created: Partial<Collection>, deleted: Partial<Collection>): Promise<void> => {
            this.commit(created, deleted);
            return Promise.resolve();
        },
    };

    public statesOn(frame: number): ObjectState[] {
        const shapes = this.#collection.shapes.filter((shape) => shape.frame === frame).map((shape) => ({
            clientID: shape.clientID ?? null,
            objectType: 'shape' as const,
            shapeType: shape.type,
            points: shape.points ?? null,
            frame,
            outside: false,
        }));
        const tracks = this.#collection.tracks.flatMap((track) => {
            const keyframe = lastKeyframe(track, frame);
            return keyframe && !keyframe.outside ? [{
                clientID: track.clientID ?? null,
                objectType: 'track' as const,
                shapeType: keyframe.type,
                points: keyframe.points ?? null,
                frame,
                outside: false,
            }] : [];
        });
        return [...shapes, ...tracks];
    }

    public commit(created: Partial<Collection>, deleted: Partial<Collection>): void {
        const removed = [...(deleted.shapes ?? []), ...(deleted.tracks ?? [])];
        const present = new Set([...this.#collection.shapes, ...this.#collection.tracks].map((o) => o.clientID));
        if (!removed.every((object) => typeof object.clientID === 'number' && present.has(object.clientID))) {
            throw new Error('Objects required to be deleted were not found in the collection');
        }
        const gone = new Set(removed.map((object) => object.clientID));
        this.#collection.shapes = this.#collection.shapes.filter((shape) => !gone.has(shape.clientID));
        this.#collection.tracks = this.#collection.tracks.filter((track) => !gone.has(track.clientID));
        this.#import({ shapes: created.shapes ?? [], tags: [], tracks: created.tracks ?? [] });
        if (removed.length || created.shapes?.length || created.tracks?.length) {
            this.commits += 1;
        }
    }

    #import(collection: Collection): void {
        const withID = <T extends { clientID?: number }>(object: T): T => {
            const imported = copy(object);
            imported.clientID = this.#nextClientID;
            this.#nextClientID += 1;
            return imported;
        };
        this.#collection.shapes.push(...collection.shapes.map(withID));
        this.#collection.tracks.push(...collection.tracks.map(withID));
    }

    /** A shape or track by client ID, as `ObjectState.export()` gives it. */
    public exportObject(clientID: number): { shapes: SerializedShape[]; tracks: SerializedTrack[] } {
        return {
            shapes: copy(this.#collection.shapes.filter((shape) => shape.clientID === clientID)),
            tracks: copy(this.#collection.tracks.filter((track) => track.clientID === clientID)),
        };
    }
}

export type LambdaCall = (taskID: number, model: MLModel, args: Record<string, unknown>) =>
Promise<TrackerResults>;

export class StandInCore {
    public readonly classes = { BaseCollectionAction };
    public version = '2.73.0';
    public models: MLModel[] = [];
    /** Until set, the function listing answers 401 (CVAT before the user logs in). */
    public loggedIn = false;
    public readonly calls: Record<string, unknown>[] = [];
    readonly #actions: ActionLike[] = [];
    readonly #plugins: CorePlugin[] = [];
    readonly #lambdaCall: LambdaCall;

    public constructor(lambdaCall: LambdaCall) {
        this.#lambdaCall = lambdaCall;
    }

    public readonly server = {
        about: (): Promise<{ version: string }> => Promise.resolve({ version: this.version }),
    };

    public readonly plugins = {
        register: (plugin: CorePlugin): Promise<void> => {
            this.#plugins.push(plugin);
            return Promise.resolve();
        },
    };

    public readonly lambda = {
        list: (): Promise<{ models: MLModel[]; count: number }> => {
            if (!this.loggedIn) {
                return Promise.reject(new ServerError('Authentication credentials were not provided.', 401));
            }
            return Promise.resolve({ models: [...this.models], count: this.models.length });
        },
        call: (taskID: number, model: MLModel, args: Record<string, unknown>): Promise<TrackerResults> => {
            const body = { ...args, task: taskID };
            this.calls.push(body);
            return this.#lambdaCall(taskID, model, body);
        },
    };

    public readonly actions = {
        list: async (): Promise<ActionLike[]> => {
            for (const plugin of this.#plugins) {
                await plugin.cvat.actions.list.enter(plugin);
            }
            return [...this.#actions];
        },
        register: (action: object): Promise<void> => {
            if (!(action instanceof BaseAction)) {
                return Promise.reject(new Error('Provided action must inherit one of base classes'));
            }
            const { name } = action as unknown as ActionLike;
            if (this.#actions.some((other) => other.name === name)) {
                return Promise.reject(new Error(`Action name must be unique. Name "${name}" is already exists`));
            }
            this.#actions.push(action as unknown as ActionLike);
            return Promise.resolve();
        },
        unregister: (action: object): Promise<void> => {
            const index = this.#actions.indexOf(action as unknown as ActionLike);
            if (index === -1) {
                return Promise.reject(new Error('Action was not registered'));
            }
            this.#actions.splice(index, 1);
            return Promise.resolve();
        },
        /** Ctrl+E with no object, or Menu > Run actions: every object through the filter. */
        run: (
            job: StandInJob, action: ActionLike, parameters: Record<string, string>, frame: number,
            onProgress: (message: string, percent: number) => void = () => undefined,
            cancelled: () => boolean = () => false,
        ): Promise<void> => this.#runAction(job, action, parameters, frame, null, onProgress, cancelled),
        /** Ctrl+E on an object, or its menu's "Run annotation action". */
        call: (
            job: StandInJob, action: ActionLike, parameters: Record<string, string>, frame: number,
            clientID: number,
            onProgress: (message: string, percent: number) => void = () => undefined,
            cancelled: () => boolean = () => false,
        ): Promise<void> => this.#runAction(job, action, parameters, frame, clientID, onProgress, cancelled),
    };

    async #runAction(
        job: StandInJob, action: ActionLike, parameters: Record<string, string>, frame: number,
        clientID: number | null, onProgress: (message: string, percent: number) => void,
        cancelled: () => boolean,
    ): Promise<void> {
        try {
            await action.init(job, prepareParameters(action.parameters, parameters, job));
            const exported = clientID === null
                ? await job.annotations.export()
                : { ...job.exportObject(clientID), tags: [] };
            const frameData = await job.frames.get(frame);
            const collection = action.applyFilter({ collection: exported, frameData });
            const { created, deleted } = await action.run({
                collection, frameData, onProgress, cancelled,
            });
            job.commit(created, deleted);
        } finally {
            await action.destroy();
        }
    }
}

/** CVAT's `prepareActionParameters`: numbers as numbers, missing ones at their default (the
 * modal passes every parameter; its defaults come from the callbacks). */
function prepareParameters(
    declared: ActionParameters | null, given: Record<string, string>, job: StandInJob,
): Record<string, string | number> {
    const prepared: Record<string, string | number> = {};
    for (const [name, { type, defaultValue }] of Object.entries(declared ?? {})) {
        const fallback = typeof defaultValue === 'function' ? defaultValue({ instance: job }) : defaultValue;
        const value = Object.hasOwn(given, name) ? given[name] : fallback;
        prepared[name] = type === 'number' ? Number(value) : value;
    }
    return prepared;
}
