// The browser test page: CVAT's plugin entry point (`window.cvatUI.registerComponent`, then a
// `plugins.ready` event, as cvat-ui/src/components/plugins-entrypoint.tsx does it) over the
// cvat-core stand-in, whose `lambda.call` POSTs to the relay that behaves as CVAT's lambda
// endpoint (tests/cvat_lambda_relay.py). The plugin itself is loaded by its own script tag,
// exactly the file `make ui-plugin` builds. Tests drive it through `window.test`.

import type { MLModel, ShapeType } from '../../src/ts/cvat-core';
import { ServerError, StandInCore, StandInJob } from '../core-standin';

interface ListedFunction {
    id: string;
    name: string;
    kind: string;
    supported_shape_types?: ShapeType[];
}

async function lambdaCall(_taskID: number, model: MLModel, body: Record<string, unknown>) {
    const response = await fetch(`/api/lambda/functions/${String(model.id)}`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    const answer: unknown = await response.json();
    if (!response.ok) {
        throw new ServerError(typeof answer === 'string' ? answer : JSON.stringify(answer), response.status);
    }
    return answer as Awaited<ReturnType<StandInCore['lambda']['call']>>;
}

async function main(): Promise<void> {
    const job = new StandInJob(await (await fetch('/job.json')).json() as ConstructorParameters<typeof StandInJob>[0]);
    const core = new StandInCore(lambdaCall);
    const registered: string[] = [];
    let announce: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => { announce = resolve; });
    Object.defineProperty(window, 'cvatUI', {
        value: Object.freeze({
            registerComponent: (builder: (args: { core: StandInCore }) => { name: string }) => {
                registered.push(builder({ core }).name);
                announce();
            },
        }),
    });
    const action = async (name: string) => {
        const found = (await core.actions.list()).find((a) => a.name === name);
        if (!found) {
            throw new Error(`no action "${name}"`);
        }
        return found;
    };
    const outcome = async (work: (progress: (message: string) => void, cancelled: () => boolean) => Promise<void>,
        cancelAfterCalls: number | null) => {
        const progress: string[] = [];
        const before = core.calls.length;
        try {
            await work((message) => { progress.push(message); },
                () => cancelAfterCalls !== null && core.calls.length - before >= cancelAfterCalls);
            return { progress, error: null };
        } catch (error) {
            return { progress, error: error instanceof Error ? error.message : String(error) };
        }
    };
    Object.assign(window, {
        test: {
            ready: ready.then(() => registered),
            login: async () => {
                const listed = await (await fetch('/api/lambda/functions')).json() as ListedFunction[];
                core.models = listed.map((f) => ({
                    id: f.id, name: f.name, kind: f.kind, supportedShapeTypes: f.supported_shape_types,
                }));
                core.loggedIn = true;
            },
            actions: async () => (await core.actions.list()).map((a) => a.name),
            run: async (name: string, frame: number, parameters: Record<string, string>,
                cancelAfterCalls: number | null = null) => {
                const chosen = await action(name);
                return outcome((progress, cancelled) => core.actions.run(
                    job, chosen, parameters, frame, progress, cancelled,
                ), cancelAfterCalls);
            },
            call: async (name: string, frame: number, clientID: number, parameters: Record<string, string>,
                cancelAfterCalls: number | null = null) => {
                const chosen = await action(name);
                return outcome((progress, cancelled) => core.actions.call(
                    job, chosen, parameters, frame, clientID, progress, cancelled,
                ), cancelAfterCalls);
            },
            export: () => job.annotations.export(),
            statesOn: (frame: number) => job.statesOn(frame),
            commit: (created: Parameters<StandInJob['commit']>[0], deleted: Parameters<StandInJob['commit']>[1]) => {
                job.commit(created, deleted);
            },
            commits: () => job.commits,
        },
    });
    setTimeout(() => {
        window.document.dispatchEvent(new CustomEvent('plugins.ready', { bubbles: true }));
    });
}

main().catch((error: unknown) => { console.error(`test page failed: ${String(error)}`); });
