// Entry point, as CVAT loads UI plugins: built in (CLIENT_PLUGINS=<this folder> when building
// CVAT's UI, which compiles src/ts/index.tsx), or as one plain script added to the stock UI
// (`make ui-plugin`). Either way it registers through `window.cvatUI.registerComponent` and
// uses only the `core` that CVAT hands it.

import type { CVATCore } from './cvat-core';
import { installPlugin, PLUGIN_NAME, type TrackerActionRegistry } from './plugin';

interface CvatUI {
    registerComponent: (builder: (args: { core: CVATCore }) => {
        name: string;
        destructor: () => void;
    }) => void;
}

let registered = false;

function register(): void {
    const { cvatUI } = window as unknown as { cvatUI?: CvatUI };
    if (registered || !cvatUI) {
        return;
    }
    registered = true;
    cvatUI.registerComponent(({ core }) => {
        const installing: Promise<TrackerActionRegistry | null> = installPlugin(core).catch((error: unknown) => {
            console.error(`[segmentation tracker plugin] could not install: ${String(error)}`);
            return null;
        });
        return {
            name: PLUGIN_NAME,
            destructor: () => {
                installing.then((registry) => registry?.destroy()).catch(() => undefined);
            },
        };
    });
}

// A script added to the page may run before or after CVAT opens plugin registration.
register();
window.addEventListener('plugins.ready', register, { once: true });
