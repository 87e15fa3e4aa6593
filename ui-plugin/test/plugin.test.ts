// The plugin's logic under Node's test runner, against the cvat-core stand-in
// (test/core-standin.ts) and a fake tracker function behind CVAT's relay (test/fake-tracker.ts).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { CVATCore, SerializedShape, SerializedTrack, ShapeType } from '../src/ts/cvat-core';
import { isMarkedMask, maskIoU } from '../src/ts/masks';
import { installPlugin, versionAtLeast } from '../src/ts/plugin';
import { ALL_KEYFRAMES, CONVERT_TO_TRACKS, TARGET_FRAME } from '../src/ts/tracker-action';
import { StandInCore, StandInJob } from './core-standin';
import { FakeTracker } from './fake-tracker';

const LABEL = 1;

function mask(frame: number, x: number, options: Partial<SerializedShape> = {}): SerializedShape {
    // A 10x8 box at (x, 20), all set: one run of zeros (none), one run of ones.
    return shape('mask', frame, [0, 80, x, 20, x + 9, 27], options);
}

function polygon(frame: number, x: number, options: Partial<SerializedShape> = {}): SerializedShape {
    return shape('polygon', frame, [x, 10, x + 20, 10, x + 10, 30], options);
}

function shape(type: ShapeType, frame: number, points: number[], options: Partial<SerializedShape>):
SerializedShape {
    return {
        type, frame, points, label_id: LABEL, group: 0, source: 'manual', attributes: [],
        elements: [], occluded: false, outside: false, rotation: 0, z_order: 0, ...options,
    };
}

function track(frame: number, x: number): SerializedTrack {
    return {
        label_id: LABEL, group: 0, frame, source: 'manual', attributes: [], elements: [],
        shapes: [{
            frame, type: 'polygon', points: [x, 40, x + 20, 40, x + 10, 60], occluded: false,
            outside: false, rotation: 0, z_order: 0, attributes: [],
        }],
    };
}

async function setup(annotations: { shapes?: SerializedShape[]; tracks?: SerializedTrack[] },
    deletedFrames: number[] = []) {
    const fake = new FakeTracker();
    const core = new StandInCore((taskID, model, body) => fake.call(taskID, model, body));
    core.loggedIn = true;
    core.models = [fake.model];
    let clock = 0;
    const job = new StandInJob({
        id: 7, taskId: 3, startFrame: 0, stopFrame: 9, width: 100, height: 80, deletedFrames,
        annotations: { shapes: annotations.shapes ?? [], tracks: annotations.tracks ?? [] },
    });
    const registry = await installPlugin(core as unknown as CVATCore, {
        sleep: () => Promise.resolve(), backoffMs: 1, now: () => (clock += 500),
    });
    assert.ok(registry);
    const actions = await core.actions.list();
    const action = actions.find((a) => a.name === fake.model.name);
    assert.ok(action, 'the action is listed');
    return { fake, core, job, action };
}

async function shapesOf(job: StandInJob, type: ShapeType = 'mask') {
    return (await job.annotations.export()).shapes.filter((s) => s.type === type)
        .sort((a, b) => a.frame - b.frame || a.group - b.group);
}

function boxX(shape: SerializedShape): number {
    return shape.points![shape.points!.length - 4];
}

describe('registration', () => {
    it('lists one action per tracker that takes masks or polygons, once the user is logged in', async () => {
        const fake = new FakeTracker();
        const core = new StandInCore(fake.call);
        const deaot = { ...fake.model, id: 'pth-deaott-tracker', name: 'DeAOT Tracker (deaott)' };
        core.models = [
            fake.model, deaot,
            { id: 'siammask', name: 'SiamMask', kind: 'tracker', supportedShapeTypes: ['rectangle'] },
            { id: 'yolo', name: 'YOLO', kind: 'detector', supportedShapeTypes: ['mask'] },
        ];
        assert.ok(await installPlugin(core as unknown as CVATCore));
        assert.deepEqual((await core.actions.list()).map((a) => a.name), []); // 401 before login
        core.loggedIn = true;
        assert.deepEqual((await core.actions.list()).map((a) => a.name),
            ['Segment Anything 2.1 Tracker', 'DeAOT Tracker (deaott)']);
        assert.equal((await core.actions.list()).length, 2); // listed again: no duplicates
        core.models = [fake.model, { ...deaot, id: 'another', name: fake.model.name }];
        assert.deepEqual((await core.actions.list()).map((a) => a.name),
            ['Segment Anything 2.1 Tracker', 'Segment Anything 2.1 Tracker (another)']);
    });

    it('refuses an older CVAT with one console line and no action', async () => {
        const errors: string[] = [];
        const original = console.error;
        console.error = (line: string) => { errors.push(line); };
        try {
            const fake = new FakeTracker();
            const old = new StandInCore(fake.call) as unknown as Record<string, unknown>;
            old.classes = {};
            assert.equal(await installPlugin(old as unknown as CVATCore), null);
            assert.match(errors[0], /lacks core\.classes\.BaseCollectionAction/);
            const core = new StandInCore(fake.call);
            core.version = '2.39.1';
            core.loggedIn = true;
            core.models = [fake.model];
            await installPlugin(core as unknown as CVATCore);
            assert.deepEqual(await core.actions.list(), []);
            assert.match(errors[1], /CVAT 2\.39\.1 is older than 2\.40\.0/);
        } finally {
            console.error = original;
        }
        assert.ok(versionAtLeast('2.73.0', [2, 40, 0]) && versionAtLeast('2.40.0', [2, 40, 0]));
        assert.ok(!versionAtLeast('2.9.10', [2, 40, 0]) && versionAtLeast('3.0.0-dev', [2, 40, 0]));
    });
});

describe('tracking a mask', () => {
    it('forward: one call per frame through the relay, one auto mask per frame, in one group', async () => {
        const { fake, core, job, action } = await setup({ shapes: [mask(2, 30)] });
        const [start] = job.statesOn(2);
        await core.actions.call(job, action, { [TARGET_FRAME]: '6' }, 2, start.clientID!);
        const masks = await shapesOf(job);
        assert.deepEqual(masks.map((m) => [m.frame, m.source, m.group, boxX(m)]), [
            [2, 'manual', 1, 30], [3, 'auto', 1, 31], [4, 'auto', 1, 32], [5, 'auto', 1, 33], [6, 'auto', 1, 34],
        ]);
        assert.equal(job.commits, 1); // one undoable change
        // Frame numbers travel in the shapes: the start shape's, then {frame} with each state.
        assert.deepEqual(fake.bodies.map((b) => [b.frame, b.shapes, 'states' in b, b.job, b.task]), [
            [2, [{ type: 'mask', points: mask(2, 30).points, frame: 2 }], false, 7, 3],
            ...[3, 4, 5, 6].map((f) => [f, [{ type: 'mask', frame: f }], true, 7, 3]),
        ]);
    });

    it('backward when the target is before the current frame, skipping deleted frames', async () => {
        const { fake, core, job, action } = await setup({ shapes: [mask(6, 30)] }, [4]);
        await core.actions.call(job, action, { [TARGET_FRAME]: '2' }, 6, job.statesOn(6)[0].clientID!);
        assert.deepEqual((await shapesOf(job)).map((m) => [m.frame, boxX(m)]), [[2, 33], [3, 32], [5, 31], [6, 30]]);
        assert.deepEqual(fake.bodies.map((b) => b.frame), [6, 5, 3, 2]);
    });

    it('output masks carry the mark, so a re-run knows them after an upload made them "file"', async () => {
        const { core, job, action } = await setup({ shapes: [mask(0, 30)] });
        await core.actions.call(job, action, { [TARGET_FRAME]: '4' }, 0, job.statesOn(0)[0].clientID!);
        const first = await shapesOf(job);
        assert.deepEqual(first.map((m) => [m.frame, m.source, isMarkedMask(m.points)]), [
            [0, 'manual', false], [1, 'auto', true], [2, 'auto', true], [3, 'auto', true], [4, 'auto', true],
        ]);
        // Export, then Upload annotations: CVAT's importer makes every source "file" (an
        // image-layout mask keeps its group) and keeps the points as written.
        job.commit({ shapes: first.map((m) => ({ ...m, id: undefined, clientID: undefined, source: 'file' })) },
            { shapes: first });
        await core.actions.call(job, action, { [TARGET_FRAME]: '4' }, 0, job.statesOn(0)[0].clientID!);
        assert.deepEqual((await shapesOf(job)).map((m) => [m.frame, m.source, m.group, boxX(m)]), [
            [0, 'file', 1, 30], [1, 'auto', 1, 31], [2, 'auto', 1, 32], [3, 'auto', 1, 33], [4, 'auto', 1, 34],
        ]);
    });

    it('a re-run from a corrected frame replaces its own output and nothing else', async () => {
        const { core, job, action } = await setup({ shapes: [mask(0, 30), mask(4, 50, { group: 0 })] });
        const first = job.statesOn(0).find((s) => s.shapeType === 'mask')!;
        await core.actions.call(job, action, { [TARGET_FRAME]: '6' }, 0, first.clientID!);
        // The annotator edits the tracked mask on frame 2 (CVAT makes it semi-auto) ...
        const tracked = (await shapesOf(job)).find((m) => m.frame === 2 && m.group === 1)!;
        job.commit({ shapes: [{ ...tracked, clientID: undefined, source: 'semi-auto', points: mask(2, 40).points }] },
            { shapes: [tracked] });
        const corrected = (await shapesOf(job)).find((m) => m.frame === 2 && m.source === 'semi-auto')!;
        await core.actions.call(job, action, { [TARGET_FRAME]: '6' }, 2, corrected.clientID!);
        const group1 = (await shapesOf(job)).filter((m) => m.group === 1);
        assert.deepEqual(group1.map((m) => [m.frame, m.source, boxX(m)]), [
            [0, 'manual', 30], [1, 'auto', 31], [2, 'semi-auto', 40], [3, 'auto', 41], [4, 'auto', 42],
            [5, 'auto', 43], [6, 'auto', 44],
        ]);
        // ... and draws a new mask over the tracked one on frame 4: a correction of the object.
        const under = group1.find((m) => m.frame === 4)!;
        job.commit({ shapes: [mask(4, 43)] }, { shapes: [] });
        const drawn = (await shapesOf(job)).find((m) => m.frame === 4 && m.group === 0 && boxX(m) === 43)!;
        assert.ok(maskIoU(drawn.points!, under.points!) >= 0.5);
        await core.actions.call(job, action, { [TARGET_FRAME]: '6' }, 4, drawn.clientID!);
        const after = (await shapesOf(job)).filter((m) => m.group === 1);
        assert.deepEqual(after.map((m) => [m.frame, m.source, boxX(m)]), [
            [0, 'manual', 30], [1, 'auto', 31], [2, 'semi-auto', 40], [3, 'auto', 41], [4, 'manual', 43],
            [5, 'auto', 44], [6, 'auto', 45],
        ]);
        // The other person's mask (ungrouped, elsewhere) is untouched.
        assert.ok((await shapesOf(job)).some((m) => m.frame === 4 && m.group === 0 && boxX(m) === 50));
    });

    it("writes nothing on a frame where a person's shape of the object lies", async () => {
        const { core, job, action } = await setup({ shapes: [mask(0, 30, { group: 5 }), mask(3, 60, { group: 5 })] });
        await core.actions.call(job, action, { [TARGET_FRAME]: '4' }, 0, job.statesOn(0)[0].clientID!);
        assert.deepEqual((await shapesOf(job)).map((m) => [m.frame, m.source, boxX(m)]), [
            [0, 'manual', 30], [1, 'auto', 31], [2, 'auto', 32], [3, 'manual', 60], [4, 'auto', 34],
        ]);
    });

    it('an object the function loses stops there; its earlier output after that is gone', async () => {
        const { fake, core, job, action } = await setup({ shapes: [mask(0, 30)] });
        await core.actions.call(job, action, { [TARGET_FRAME]: '5' }, 0, job.statesOn(0)[0].clientID!);
        fake.loseAfter.set(30, 2);
        await core.actions.call(job, action, { [TARGET_FRAME]: '5' }, 0, job.statesOn(0)[0].clientID!);
        assert.deepEqual((await shapesOf(job)).map((m) => m.frame), [0, 1, 2]);
        assert.deepEqual(fake.bodies.slice(6).map((b) => b.frame), [0, 1, 2, 3]);
    });
});

describe("the object's other keyframes", () => {
    it("a person's shapes of the object condition it: sent first, the start frame's last", async () => {
        const { fake, core, job, action } = await setup({
            shapes: [mask(4, 30, { group: 5 }), mask(0, 10, { group: 5 }), mask(9, 70, { group: 5 })],
        });
        const start = job.statesOn(4)[0].clientID!;
        await core.actions.call(job, action, { [TARGET_FRAME]: '6' }, 4, start);
        const plan = fake.bodies.map((b) => [b.frame,
            (b.shapes as { points?: number[] }[]).map((s) => (s.points ? 'mask' : 'frame')), 'states' in b]);
        assert.deepEqual(plan, [
            [0, ['mask'], false], // the object starts on its first keyframe ...
            [9, ['mask'], true], // ... gets the others in frame order ...
            [4, ['mask'], true], // ... and last the one the run starts from
            [5, ['frame'], true], [6, ['frame'], true],
        ]);
        assert.deepEqual((await shapesOf(job)).map((m) => [m.frame, m.source, boxX(m)]), [
            [0, 'manual', 10], [4, 'manual', 30], [5, 'auto', 31], [6, 'auto', 32], [9, 'manual', 70],
        ]);
    });

    it('a function that refuses keyframes (DeAOT, 400) stops the run with what to do', async () => {
        const { fake, core, job, action } = await setup({
            shapes: [mask(4, 30, { group: 5 }), mask(0, 10, { group: 5 })],
        });
        const original = fake.call;
        fake.call = (taskID, model, body) => (Array.isArray(body.states) && Array.isArray(body.shapes)
            && (body.shapes as { points?: number[] }[])[0].points
            ? Promise.reject(Object.assign(new Error('400 Client Error'), { code: 400 }))
            : original(taskID, model, body));
        await assert.rejects(core.actions.call(job, action, { [TARGET_FRAME]: '6' }, 4,
            job.statesOn(4)[0].clientID!), /refused a keyframe on frame 4 .*turn off "Use all keyframes/);
        assert.equal(job.commits, 0);
    });

    it('turned off: a fresh track from the current frame, without frame numbers', async () => {
        const { fake, core, job, action } = await setup({
            shapes: [mask(4, 30, { group: 5 }), mask(0, 10, { group: 5 })],
        });
        await core.actions.call(job, action, { [TARGET_FRAME]: '6', [ALL_KEYFRAMES]: 'false' }, 4,
            job.statesOn(4)[0].clientID!);
        assert.deepEqual(fake.bodies.map((b) => [b.frame, b.shapes ?? null, 'states' in b]), [
            [4, [{ type: 'mask', points: mask(4, 30).points }], false], [5, null, true], [6, null, true],
        ]);
    });
});

describe('several objects, polygons and tracks', () => {
    it('Ctrl+E with no object: every visible object in one call per frame', async () => {
        const { fake, core, job, action } = await setup({
            shapes: [mask(1, 10), polygon(1, 40), shape('rectangle', 1, [5, 5, 25, 25], {}),
                polygon(2, 70), shape('polyline', 1, [0, 0, 5, 5], {})],
            tracks: [track(0, 20)],
        });
        await core.actions.run(job, action, { [TARGET_FRAME]: '3' }, 1);
        assert.deepEqual(fake.bodies.map((b) => [b.frame, ((b.shapes ?? b.states) as unknown[]).length]),
            [[1, 4], [2, 4], [3, 4]]);
        const exported = await job.annotations.export();
        assert.deepEqual((await shapesOf(job, 'polygon')).map((p) => [p.frame, p.source, p.points![0]]), [
            [1, 'manual', 40], [2, 'manual', 70], [2, 'auto', 41], [3, 'auto', 42],
        ]);
        assert.equal(exported.shapes.filter((s) => s.type === 'rectangle').length, 3);
        assert.equal(exported.shapes.filter((s) => s.type === 'polyline').length, 1); // not tracked
        const [rewritten] = exported.tracks;
        assert.deepEqual(rewritten.shapes.map((k) => [k.frame, k.points![0], k.outside]),
            [[0, 20, false], [2, 21, false], [3, 22, false]]);
    });

    it('converts polygon shapes to tracks on request, with an outside keyframe where lost', async () => {
        const { fake, core, job, action } = await setup({ shapes: [polygon(0, 40)] });
        fake.loseAfter.set(40, 2);
        await core.actions.call(job, action, { [TARGET_FRAME]: '5', [CONVERT_TO_TRACKS]: 'true' }, 0,
            job.statesOn(0)[0].clientID!);
        const exported = await job.annotations.export();
        assert.equal(exported.shapes.length, 0);
        assert.equal(exported.tracks.length, 1);
        assert.equal(exported.tracks[0].source, 'semi-auto');
        assert.deepEqual(exported.tracks[0].shapes.map((k) => [k.frame, k.outside]),
            [[0, false], [1, false], [2, false], [3, true]]);
    });
});

describe('failures', () => {
    it('a busy function (503) is retried; too many 503s stop with one message and change nothing', async () => {
        const { fake, core, job, action } = await setup({ shapes: [mask(0, 30)] });
        const start = job.statesOn(0)[0].clientID!;
        fake.failures = [503, 503];
        await core.actions.call(job, action, { [TARGET_FRAME]: '2' }, 0, start);
        assert.deepEqual((await shapesOf(job)).map((m) => m.frame), [0, 1, 2]);
        const before = JSON.stringify(await job.annotations.export());
        const commits = job.commits;
        fake.failures = [503, 503, 503, 503, 503];
        await assert.rejects(
            core.actions.call(job, action, { [TARGET_FRAME]: '4' }, 0, job.statesOn(0)[0].clientID!),
            /Segment Anything 2\.1 Tracker on frame 0 answered 503 after 5 tries: .*memory store.*Nothing was changed/,
        );
        assert.equal(JSON.stringify(await job.annotations.export()), before);
        assert.equal(job.commits, commits);
    });

    it('a lost state (404) restarts that object from its last shape, the others go on', async () => {
        const { fake, core, job, action } = await setup({ shapes: [mask(0, 10), mask(0, 50)] });
        const original = fake.call;
        fake.call = (taskID, model, body) => {
            if (body.frame === 3 && Array.isArray(body.states)) {
                fake.states.delete('token-1'); // the second object's state expired
            }
            return original(taskID, model, body);
        };
        await core.actions.run(job, action, { [TARGET_FRAME]: '4' }, 0);
        const restart = fake.bodies.find((b) => b.frame === 2 && !('states' in b));
        assert.ok(restart, 'a start call on the last tracked frame');
        assert.deepEqual((restart.shapes as { points: number[] }[]).map((s) => s.points.at(-4)), [52]);
        assert.deepEqual((await shapesOf(job)).map((m) => [m.frame, boxX(m)]), [
            [0, 10], [0, 50], [1, 11], [1, 51], [2, 12], [2, 52], [3, 13], [3, 53], [4, 14], [4, 54],
        ]);
    });

    it('a conflict (409) stops the run with its meaning; nothing is committed', async () => {
        const { fake, core, job, action } = await setup({ shapes: [polygon(0, 40)] });
        const before = JSON.stringify(await job.annotations.export());
        const original = fake.call;
        let calls = 0;
        fake.call = (taskID, model, body) => {
            calls += 1;
            return calls === 3 ? Promise.reject(Object.assign(new Error('409 Client Error'), { code: 409 }))
                : original(taskID, model, body);
        };
        await assert.rejects(core.actions.run(job, action, { [TARGET_FRAME]: '5' }, 0),
            /on frame 2 answered 409: .*tracked past this frame by another run/);
        assert.equal(JSON.stringify(await job.annotations.export()), before);
    });

    it('cancel stops between two frames and keeps what was tracked', async () => {
        const { fake, core, job, action } = await setup({ shapes: [mask(0, 30)] });
        const progress: string[] = [];
        await core.actions.call(job, action, { [TARGET_FRAME]: '9' }, 0, job.statesOn(0)[0].clientID!,
            (message) => { progress.push(message); }, () => fake.bodies.length >= 3);
        assert.deepEqual((await shapesOf(job)).map((m) => m.frame), [0, 1, 2]);
        assert.match(progress[0], /^Frame 1 of 9, 1 object$/);
        assert.match(progress[1], /^Frame 2 of 9, 1 object, [\d.]+ frames\/s$/);
    });
});

describe('what the action applies to', () => {
    it('shapes and tracks the function declares, on the current frame; never mask tracks', async () => {
        const { core, job, action } = await setup({
            shapes: [mask(0, 10), polygon(1, 10), shape('points', 0, [1, 1], {})],
            tracks: [track(0, 10)],
        });
        const exported = await job.annotations.export();
        const filtered = action.applyFilter({ collection: exported, frameData: await job.frames.get(0) });
        assert.deepEqual(filtered.shapes.map((s) => s.type), ['mask']);
        assert.equal(filtered.tracks.length, 1);
        const states = job.statesOn(0);
        assert.deepEqual(states.map((s) => action.isApplicableForObject(s)), [true, false, true]);
        assert.equal(action.isApplicableForObject({ ...states[0], objectType: 'track' }), false);
        assert.ok(core.calls.length === 0);
    });
});
