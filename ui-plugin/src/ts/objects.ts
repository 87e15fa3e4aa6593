// Which annotations are one object, and what a run writes: the same object rule as
// `sam2-cvat-track`, so the UI and the tool can work on one job.
//
// - A track is one object; its keyframes on the tracked frames are rewritten by a run
//   (correct a track on the frame where it drifts, then run again from there).
// - Shapes (masks, and polygons or rectangles kept as shapes) with the same label and group
//   id are one object. A run gives an ungrouped shape a new group, and marks what it
//   creates `source: "auto"` in that group (masks also with `sam2-cvat-track`'s mark in
//   the points, which survives CVAT's importer): a re-run replaces exactly those output
//   shapes on the frames it tracks, and never a shape a person drew or edited (CVAT turns
//   an edited auto shape into "semi-auto" and re-encodes an edited mask). On a frame where a person's shape of the object exists,
//   the run writes nothing for it: one shape per object per frame.
// - An ungrouped mask drawn over a tracked (auto) mask of the same label on its frame
//   (IoU >= 0.5) is a correction of that object: it joins its group.

import type {
    Collection, CollectionActionOutput, ObjectState, SerializedShape, SerializedTrack,
    SerializedTrackShape, ShapeType,
} from './cvat-core';
import { isMarkedMask, markMask, maskIoU } from './masks';
import type { FrameAnswers, StartObject } from './tracking-run';

export const CORRECTION_IOU = 0.5;

/** Earlier output of a tracker run: `source: "auto"`, or a mask carrying the mark
 * `sam2-cvat-track` and this plugin write (it survives CVAT's importer, `source` does not). */
export function isOutput(shape: SerializedShape): boolean {
    return shape.source === 'auto' || (shape.type === 'mask' && isMarkedMask(shape.points));
}

function emptyCollection(): Collection {
    return { shapes: [], tags: [], tracks: [] };
}

/** The track's state on ``frame``: its last keyframe at or before it (tracking backward from
 * before its first keyframe: none). */
export function keyframeAtOrBefore(track: SerializedTrack, frame: number): SerializedTrackShape | null {
    const before = track.shapes.filter((shape) => shape.frame <= frame);
    return before.length ? before.reduce((a, b) => (a.frame > b.frame ? a : b)) : null;
}

export function visibleOn(track: SerializedTrack, frame: number): boolean {
    const keyframe = keyframeAtOrBefore(track, frame);
    return keyframe !== null && !keyframe.outside;
}

interface ShapeObject {
    kind: 'shape';
    key: number;
    type: ShapeType;
    template: SerializedShape;
    /** A person's shapes of this object on other frames, by frame: its keyframes (the run
     * writes nothing there). */
    peoplesShapes: Map<number, number[]>;
    /** Earlier auto output of this object, by frame: replaced where the run tracks. */
    autoByFrame: Map<number, SerializedShape[]>;
    written: Map<number, number[]>;
}

interface TrackObject {
    kind: 'track';
    key: number;
    type: ShapeType;
    original: SerializedTrack | null; // null: a shape converted to a track
    track: SerializedTrack;
    startPoints: number[];
    written: Map<number, number[] | null>; // null: lost there (an outside keyframe)
}

type PlannedObject = ShapeObject | TrackObject;

export interface PlanOptions {
    startFrame: number;
    /** Polygons (and rectangles) drawn as shapes become tracks holding the run's keyframes. */
    convertShapesToTracks: boolean;
}

/** The objects of a run and what it writes, built up frame by frame. */
export class TrackingOutput {
    readonly #objects: PlannedObject[] = [];
    readonly #created = emptyCollection();
    readonly #deleted = emptyCollection();
    readonly #startFrame: number;

    /**
     * @param collection the objects to track (shapes on the start frame, tracks visible there)
     * @param job every annotation of the job (``job.annotations.export()``)
     * @param startStates the objects on the start frame (tracks' points there)
     */
    public constructor(
        collection: Collection, job: Collection, startStates: ObjectState[], options: PlanOptions,
    ) {
        this.#startFrame = options.startFrame;
        let nextGroup = Math.max(0, ...job.shapes.map((s) => s.group), ...job.tracks.map((t) => t.group)) + 1;
        for (const shape of collection.shapes) {
            const key = this.#objects.length;
            if (options.convertShapesToTracks && shape.type !== 'mask') {
                this.#objects.push(this.#converted(key, shape));
                continue;
            }
            let group = shape.group || this.#correctedGroup(shape, job);
            if (!group) {
                group = nextGroup;
                nextGroup += 1;
            }
            if (group !== shape.group) {
                // The person's shape joins its object's group: rewritten, otherwise unchanged.
                this.#deleted.shapes.push(shape);
                this.#created.shapes.push({ ...withoutIdentity(shape), group });
            }
            this.#objects.push(this.#shapeObject(key, { ...shape, group }, job));
        }
        for (const track of collection.tracks) {
            const state = startStates.find((s) => s.clientID === track.clientID);
            const keyframe = keyframeAtOrBefore(track, options.startFrame);
            const points = state?.points ?? keyframe?.points;
            if (!points || !keyframe) {
                continue;
            }
            this.#objects.push({
                kind: 'track',
                key: this.#objects.length,
                type: keyframe.type,
                original: track,
                track: { ...withoutIdentity(track), shapes: track.shapes.map((s) => ({ ...s })) },
                written: new Map(),
                startPoints: points,
            });
        }
    }

    /** What the run starts from: each object's shape on the start frame and, with
     * ``withKeyframes``, a person's shapes of the object on other frames (shape objects
     * only: CVAT does not tell a track's keyframes drawn by people from those a run wrote). */
    public startObjects(withKeyframes: boolean): StartObject[] {
        return this.#objects.map((object) => ({
            key: object.key,
            shape: {
                type: object.type,
                points: object.kind === 'shape' ? object.template.points ?? [] : object.startPoints,
            },
            keyframes: withKeyframes && object.kind === 'shape'
                ? [...object.peoplesShapes].sort(([a], [b]) => a - b)
                    .map(([frame, points]) => ({ frame, shape: { type: object.type, points } }))
                : [],
        }));
    }

    /** The answers of one tracked frame. */
    public record(frame: number, answers: FrameAnswers): void {
        answers.forEach((points, key) => {
            const object = this.#objects[key];
            if (object.kind === 'track') {
                object.written.set(frame, points);
            } else if (points !== null) {
                object.written.set(frame, points);
            }
        });
    }

    /** Everything the run changes, for ``frames`` (the frames it covered: where it replaces
     * earlier output, also of objects lost before them). */
    public finish(frames: number[]): CollectionActionOutput {
        const covered = new Set(frames);
        const created = { ...this.#created, shapes: [...this.#created.shapes], tracks: [...this.#created.tracks] };
        const deleted = { ...this.#deleted, shapes: [...this.#deleted.shapes], tracks: [...this.#deleted.tracks] };
        for (const object of this.#objects) {
            if (object.kind === 'shape') {
                object.autoByFrame.forEach((shapes, frame) => {
                    if (covered.has(frame)) {
                        deleted.shapes.push(...shapes);
                    }
                });
                object.written.forEach((points, frame) => {
                    if (!object.peoplesShapes.has(frame)) {
                        created.shapes.push({
                            ...withoutIdentity(object.template),
                            frame,
                            points: object.type === 'mask' ? markMask(points) : points,
                            source: 'auto',
                            outside: false,
                        });
                    }
                });
                continue;
            }
            const { track } = object;
            const template = keyframeAtOrBefore(track, this.#startFrame) ?? track.shapes[0];
            track.shapes = track.shapes.filter((shape) => !covered.has(shape.frame));
            object.written.forEach((points, frame) => {
                track.shapes.push({
                    ...template,
                    frame,
                    points: points ?? template.points,
                    outside: points === null,
                    occluded: false,
                    attributes: [],
                });
            });
            // Written anew: CVAT gives the keyframes new identities when it imports the track.
            track.shapes = track.shapes.map((shape) => withoutIdentity(shape))
                .sort((a, b) => a.frame - b.frame);
            created.tracks.push(track);
            if (object.original) {
                deleted.tracks.push(object.original);
            }
        }
        return { created, deleted };
    }

    #shapeObject(key: number, shape: SerializedShape, job: Collection): ShapeObject {
        const same = job.shapes.filter((other) => other.label_id === shape.label_id
            && other.group === shape.group && other.type === shape.type
            && other.clientID !== shape.clientID);
        const autoByFrame = new Map<number, SerializedShape[]>();
        const peoplesShapes = new Map<number, number[]>();
        for (const other of same) {
            if (isOutput(other)) {
                autoByFrame.set(other.frame, [...(autoByFrame.get(other.frame) ?? []), other]);
            } else if (other.frame !== shape.frame && other.points) {
                peoplesShapes.set(other.frame, other.points);
            }
        }
        // On the start frame the person's shape stands; tracked shapes there are replaced.
        const onStart = autoByFrame.get(shape.frame) ?? [];
        if (!isOutput(shape) && onStart.length) {
            this.#deleted.shapes.push(...onStart);
        }
        autoByFrame.delete(shape.frame);
        return {
            kind: 'shape',
            key,
            type: shape.type,
            template: shape,
            peoplesShapes,
            autoByFrame,
            written: new Map(),
        };
    }

    /** The group of a tracked mask this ungrouped mask was drawn over, or 0. */
    #correctedGroup(shape: SerializedShape, job: Collection): number {
        if (shape.type !== 'mask' || !shape.points) {
            return 0;
        }
        const overlapped = job.shapes.find((other) => isOutput(other) && other.group
            && other.type === 'mask' && other.frame === shape.frame
            && other.label_id === shape.label_id && other.points
            && maskIoU(other.points, shape.points as number[]) >= CORRECTION_IOU);
        return overlapped?.group ?? 0;
    }

    #converted(key: number, shape: SerializedShape): TrackObject {
        this.#deleted.shapes.push(shape);
        const track: SerializedTrack = {
            label_id: shape.label_id,
            group: shape.group,
            frame: shape.frame,
            // A person's shape completed by the tracker.
            source: 'semi-auto',
            attributes: shape.attributes.map((attribute) => ({ ...attribute })),
            elements: [],
            shapes: [{
                frame: shape.frame,
                attributes: [],
                occluded: shape.occluded,
                outside: false,
                points: [...(shape.points ?? [])],
                rotation: shape.rotation,
                z_order: shape.z_order,
                type: shape.type,
            }],
        };
        return {
            kind: 'track', key, type: shape.type, original: null, track, written: new Map(),
            startPoints: shape.points ?? [],
        };
    }
}

function withoutIdentity<T extends { id?: number; clientID?: number }>(object: T): T {
    const copy = { ...object };
    delete copy.id;
    delete copy.clientID;
    return copy;
}
