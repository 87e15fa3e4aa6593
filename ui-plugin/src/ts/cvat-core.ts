// The part of cvat-core this plugin uses, as CVAT hands it to a plugin
// (`window.cvatUI.registerComponent(builder)`: the builder receives `{ core }`). Written from
// CVAT's own source (v2.73.0: cvat-core/src/api.ts, annotations-actions/*.ts, session.ts,
// lambda-manager.ts, ml-model.ts, server-response-types.ts, exceptions.ts); nothing is
// imported from CVAT, so one code base builds into CVAT's UI (CLIENT_PLUGINS) and into a plain
// script added to the stock UI.

export type ShapeType = 'rectangle' | 'polygon' | 'polyline' | 'points' | 'ellipse' | 'cuboid' |
    'mask' | 'skeleton';
export type Source = 'manual' | 'semi-auto' | 'auto' | 'file' | 'consensus';
export type ObjectType = 'shape' | 'track' | 'tag';

export interface SerializedAttribute {
    spec_id: number;
    value: string;
}

/** `SerializedShape`: a shape on one frame (masks: CVAT's RLE, then left, top, right, bottom). */
export interface SerializedShape {
    id?: number;
    clientID?: number;
    label_id: number;
    group: number;
    frame: number;
    source: Source;
    attributes: SerializedAttribute[];
    elements: unknown[];
    occluded: boolean;
    outside: boolean;
    points?: number[];
    rotation: number;
    z_order: number;
    type: ShapeType;
}

/** One keyframe of a track. */
export interface SerializedTrackShape {
    id?: number;
    attributes: SerializedAttribute[];
    points?: number[];
    frame: number;
    occluded: boolean;
    outside: boolean;
    rotation: number;
    type: ShapeType;
    z_order: number;
}

/** `SerializedTrack`: an object over frames, interpolated between its keyframes. */
export interface SerializedTrack {
    id?: number;
    clientID?: number;
    label_id: number;
    group: number;
    frame: number;
    source: Source;
    attributes: SerializedAttribute[];
    shapes: SerializedTrackShape[];
    elements: unknown[];
}

export interface Collection {
    shapes: SerializedShape[];
    tags: unknown[];
    tracks: SerializedTrack[];
}

/** `ObjectState`, the fields read here. */
export interface ObjectState {
    clientID: number | null;
    objectType: ObjectType;
    shapeType: ShapeType;
    points: number[] | null;
    frame: number;
    outside: boolean;
}

export interface FrameData {
    number: number;
    width: number;
    height: number;
    deleted: boolean;
}

/** `Job` (cvat-core session.ts), the members used. */
export interface Job {
    id: number;
    taskId: number;
    startFrame: number;
    stopFrame: number;
    frames: {
        get: (frame: number) => Promise<FrameData>;
        frameNumbers: () => Promise<number[]>;
    };
    annotations: {
        get: (frame: number, allTracks: boolean, filters: object[]) => Promise<ObjectState[]>;
        export: () => Promise<Collection>;
    };
}

/** `MLModel` (cvat-core ml-model.ts). */
export interface MLModel {
    id: string | number;
    name: string;
    kind: string;
    supportedShapeTypes?: ShapeType[];
}

/** What a tracker function answers through CVAT's relay (`TrackerResults`). */
export interface TrackerResults {
    shapes: ({ type: ShapeType; points: number[] } | null)[];
    states: unknown[];
}

export type ActionParameterType = 'select' | 'number' | 'checkbox';
export type ActionParameters = Record<string, {
    type: ActionParameterType;
    values: string[] | ((context: { instance: Job }) => string[]);
    defaultValue: string | ((context: { instance: Job }) => string);
}>;

/** `CollectionActionInput`: what CVAT passes to an action's `run`, on the current frame. */
export interface CollectionActionInput {
    onProgress: (message: string, percent: number) => void;
    cancelled: () => boolean;
    collection: Collection;
    frameData: { width: number; height: number; number: number };
}

export interface CollectionActionOutput {
    created: Collection;
    deleted: Collection;
}

/** `BaseCollectionAction`: CVAT checks `instanceof` when registering, so actions extend the
 * class CVAT hands over (`core.classes.BaseCollectionAction`). */
export interface BaseCollectionActionClass {
    new (): {
        init(instance: Job, parameters: Record<string, string | number>): Promise<void>;
    };
}

/** A cvat-core plugin (`core.plugins.register`): `enter` runs before the wrapped API call. */
export interface CorePlugin {
    name: string;
    description: string;
    cvat: {
        actions: {
            list: { enter: (plugin: CorePlugin) => Promise<null> };
        };
    };
}

/** The `core` object a UI plugin receives. */
export interface CVATCore {
    classes: { BaseCollectionAction?: BaseCollectionActionClass };
    actions?: {
        list: () => Promise<{ name: string }[]>;
        register: (action: object) => Promise<void>;
        unregister: (action: object) => Promise<void>;
    };
    lambda: {
        list: () => Promise<{ models: MLModel[] }>;
        call: (taskID: number, model: MLModel, args: object) => Promise<TrackerResults>;
    };
    plugins: { register: (plugin: CorePlugin) => Promise<void> };
    server: { about: () => Promise<{ version: string }> };
}

/** `ServerError`: `core.lambda.call` throws it for non-2xx answers, the status in `code`. */
export interface ServerErrorLike {
    message: string;
    code?: number;
}
