// One annotation action per deployed tracker function that declares masks or polygons,
// kept in step with what CVAT lists: the page (and this plugin) loads before the user logs
// in, when CVAT answers function listings with 401, so functions are listed each time CVAT
// lists its actions (the actions modal does so whenever it opens).

import type { CVATCore, MLModel } from './cvat-core';
import { trackerActionClass, type TrackerActionOptions } from './tracker-action';

export const PLUGIN_NAME = 'Segmentation tracker actions';
/** The server relays mask and polygon trackers since 2.40.0. */
export const MINIMUM_CVAT: [number, number, number] = [2, 40, 0];
const LOG_PREFIX = '[segmentation tracker plugin]';

/** What this plugin needs from cvat-core that an older CVAT lacks (empty: all there). */
export function missingFeatures(core: Partial<CVATCore>): string[] {
    const missing: string[] = [];
    if (typeof core.classes?.BaseCollectionAction !== 'function') {
        missing.push('core.classes.BaseCollectionAction (CVAT 2.23)');
    }
    if (typeof core.actions?.register !== 'function') {
        missing.push('core.actions.register (CVAT 2.9.2)');
    }
    if (typeof core.lambda?.call !== 'function' || typeof core.lambda.list !== 'function') {
        missing.push('core.lambda.call and core.lambda.list');
    }
    if (typeof core.plugins?.register !== 'function') {
        missing.push('core.plugins.register');
    }
    return missing;
}

export function versionAtLeast(version: string, minimum: [number, number, number]): boolean {
    const parts = version.split(/[.+-]/).slice(0, 3).map((part) => Number.parseInt(part, 10) || 0);
    for (let i = 0; i < 3; i += 1) {
        if ((parts[i] ?? 0) !== minimum[i]) {
            return (parts[i] ?? 0) > minimum[i];
        }
    }
    return true;
}

/** A tracker that can follow masks or polygons (the only ones worth an action: rectangles
 * already have CVAT's AI Tools panel). */
export function tracksSegments(model: MLModel): boolean {
    const types = model.supportedShapeTypes ?? [];
    return model.kind === 'tracker' && (types.includes('mask') || types.includes('polygon'));
}

type TrackerAction = InstanceType<ReturnType<typeof trackerActionClass>>;

export class TrackerActionRegistry {
    readonly #core: CVATCore;
    readonly #actionClass: ReturnType<typeof trackerActionClass>;
    readonly #runOptions: TrackerActionOptions['run'];
    readonly #actions = new Map<string, TrackerAction>(); // by model id
    #syncing: Promise<void> | null = null;
    #serverChecked: boolean | null = null;

    public constructor(core: CVATCore, runOptions?: TrackerActionOptions['run']) {
        this.#core = core;
        this.#actionClass = trackerActionClass(core.classes.BaseCollectionAction!);
        this.#runOptions = runOptions;
    }

    /** Hooks ``core.actions.list`` (cvat-core's plugin registry) to list functions first. */
    public async install(): Promise<void> {
        await this.#core.plugins.register({
            name: PLUGIN_NAME,
            description: 'Runs tracker functions that take masks and polygons as annotation actions',
            cvat: {
                actions: {
                    list: {
                        enter: async () => {
                            await this.sync();
                            return null;
                        },
                    },
                },
            },
        });
    }

    /** Register actions for functions that appeared, unregister those of functions gone. */
    public async sync(): Promise<void> {
        this.#syncing ??= this.#sync().finally(() => { this.#syncing = null; });
        return this.#syncing;
    }

    public get actions(): TrackerAction[] {
        return [...this.#actions.values()];
    }

    public async destroy(): Promise<void> {
        for (const action of this.#actions.values()) {
            await this.#core.actions!.unregister(action);
        }
        this.#actions.clear();
    }

    async #serverSupported(): Promise<boolean> {
        if (this.#serverChecked === null) {
            try {
                const { version } = await this.#core.server.about();
                this.#serverChecked = versionAtLeast(version, MINIMUM_CVAT);
                if (!this.#serverChecked) {
                    console.error(`${LOG_PREFIX} CVAT ${version} is older than ${MINIMUM_CVAT.join('.')}, `
                        + 'the first whose server relays mask and polygon trackers: no tracker actions.');
                }
            } catch {
                return false; // not known yet (e.g. not logged in): ask again next time
            }
        }
        return this.#serverChecked;
    }

    async #sync(): Promise<void> {
        if (!(await this.#serverSupported())) {
            return;
        }
        let models: MLModel[];
        try {
            ({ models } = await this.#core.lambda.list());
        } catch {
            return; // not logged in yet, or no serverless backend: nothing to offer now
        }
        const trackers = models.filter(tracksSegments);
        const ids = new Set(trackers.map((model) => String(model.id)));
        for (const [id, action] of this.#actions) {
            if (!ids.has(id)) {
                await this.#core.actions!.unregister(action);
                this.#actions.delete(id);
            }
        }
        for (const model of trackers) {
            if (!this.#actions.has(String(model.id))) {
                this.#actions.set(String(model.id), await this.#register(model));
            }
        }
    }

    /** An action named as CVAT lists the function; CVAT wants action names unique, so a
     * name already taken (two functions of one name) gets the function's id too. */
    async #register(model: MLModel): Promise<TrackerAction> {
        const make = (name: string) => new this.#actionClass({
            model,
            name,
            call: (taskID, target, args) => this.#core.lambda.call(taskID, target, args),
            run: this.#runOptions,
        });
        const action = make(model.name);
        try {
            await this.#core.actions!.register(action);
            return action;
        } catch {
            const renamed = make(`${model.name} (${model.id})`);
            await this.#core.actions!.register(renamed);
            return renamed;
        }
    }
}

/** Install the plugin into ``core``, or say in the console why not (never a broken UI). */
export async function installPlugin(
    core: CVATCore, runOptions?: TrackerActionOptions['run'],
): Promise<TrackerActionRegistry | null> {
    const missing = missingFeatures(core);
    if (missing.length) {
        console.error(`${LOG_PREFIX} this CVAT lacks ${missing.join(', ')}: no tracker actions `
            + `(CVAT ${MINIMUM_CVAT.join('.')} or newer is needed).`);
        return null;
    }
    const registry = new TrackerActionRegistry(core, runOptions);
    await registry.install();
    return registry;
}
