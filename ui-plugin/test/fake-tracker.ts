// A tracker function behind CVAT's relay, for the plugin's logic tests: it keeps states by
// token as ours does (a lost token: 404), counts steps in the state, and answers each
// object's shape moved by one pixel to the right per step (masks: their box moves); a
// whole shape sent with a state is a keyframe: the object is there from then on. Faults:
// statuses to answer before anything is done (`failures`), objects to lose after a number
// of steps (`loseAfter`, by the x of the shape they started from).

import type { MLModel, ShapeType, TrackerResults } from '../src/ts/cvat-core';
import { ServerError } from './core-standin';

interface FakeState {
    type: ShapeType;
    points: number[];
    steps: number;
    startX: number;
}

export class FakeTracker {
    public readonly states = new Map<string, FakeState>();
    public failures: number[] = [];
    public loseAfter = new Map<number, number>();
    public readonly bodies: Record<string, unknown>[] = [];
    #next = 0;

    public readonly model: MLModel = {
        id: 'pth-facebookresearch-sam2-tracker',
        name: 'Segment Anything 2.1 Tracker',
        kind: 'tracker',
        supportedShapeTypes: ['mask', 'polygon', 'rectangle'],
    };

    public call = (_taskID: number, _model: MLModel, body: Record<string, unknown>): Promise<TrackerResults> => {
        this.bodies.push(body);
        const failure = this.failures.shift();
        if (failure !== undefined) {
            return Promise.reject(new ServerError(`${failure} Client Error: for url: http://nuclio`, failure));
        }
        if (Array.isArray(body.shapes) && !Array.isArray(body.states)) {
            const shapes = body.shapes as { type: ShapeType; points: number[] }[];
            const states = shapes.map((shape) => {
                const token = `token-${this.#next}`;
                this.#next += 1;
                this.states.set(token, {
                    type: shape.type, points: [...shape.points], steps: 0, startX: firstX(shape),
                });
                return { sam2: token };
            });
            return Promise.resolve({ shapes, states });
        }
        const refs = body.states as { sam2: string }[];
        const stored = refs.map((ref) => this.states.get(ref.sam2));
        if (stored.some((state) => state === undefined)) {
            return Promise.reject(new ServerError('404 Client Error: Not Found for url: http://nuclio', 404));
        }
        const sent = (body.shapes ?? []) as ({ type?: ShapeType; points?: number[] } | null)[];
        if (sent.length && sent.every((shape) => shape?.points !== undefined)) {
            stored.forEach((state, index) => { state!.points = [...sent[index]!.points!]; });
            return Promise.resolve({ shapes: sent as TrackerResults['shapes'], states: refs });
        }
        const shapes = stored.map((state) => {
            const fake = state!;
            fake.steps += 1;
            fake.points = moved(fake.type, fake.points);
            const lostAt = this.loseAfter.get(fake.startX);
            return lostAt !== undefined && fake.steps > lostAt ? null : { type: fake.type, points: [...fake.points] };
        });
        return Promise.resolve({ shapes, states: refs });
    };
}

function firstX(shape: { type: ShapeType; points: number[] }): number {
    return shape.type === 'mask' ? shape.points[shape.points.length - 4] : shape.points[0];
}

export function moved(type: ShapeType, points: number[]): number[] {
    if (type === 'mask') {
        const box = points.slice(-4);
        return [...points.slice(0, -4), box[0] + 1, box[1], box[2] + 1, box[3]];
    }
    return points.map((value, index) => (index % 2 === 0 ? value + 1 : value));
}
