// CVAT's mask encoding: points = run lengths + [left, top, right, bottom] (the box inclusive);
// runs alternate starting with a run of zeros and scan the box row by row.

export interface MaskBox {
    left: number;
    top: number;
    width: number;
    height: number;
    /** 1 where the mask is set, row by row within the box: Uint8Array(width * height). */
    bits: Uint8Array;
}

/** `sam2-cvat-track`'s mark of output masks: two empty runs before the box. No pixel
 * changes; CVAT's own mask encoders never write them, and its importer keeps points as
 * written while it resets `source` (see cvat_track/marker.py). */
export function markMask(points: number[]): number[] {
    return isMarkedMask(points) ? [...points] : [...points.slice(0, -4), 0, 0, ...points.slice(-4)];
}

export function isMarkedMask(points: number[] | undefined): boolean {
    return !!points && points.length >= 7 && points.at(-6) === 0 && points.at(-5) === 0;
}

export function decodeMask(points: number[]): MaskBox {
    const [left, top, right, bottom] = points.slice(-4);
    const width = right - left + 1;
    const height = bottom - top + 1;
    const bits = new Uint8Array(Math.max(0, width * height));
    let offset = 0;
    points.slice(0, -4).forEach((run, index) => {
        if (index % 2 === 1) {
            bits.fill(1, offset, offset + run);
        }
        offset += run;
    });
    return { left, top, width, height, bits };
}

function area(mask: MaskBox): number {
    return mask.bits.reduce((sum, bit) => sum + bit, 0);
}

/** Intersection over union of two masks (0 when both are empty). */
export function maskIoU(a: number[], b: number[]): number {
    const first = decodeMask(a);
    const second = decodeMask(b);
    let intersection = 0;
    const top = Math.max(first.top, second.top);
    const bottom = Math.min(first.top + first.height, second.top + second.height);
    const left = Math.max(first.left, second.left);
    const right = Math.min(first.left + first.width, second.left + second.width);
    for (let y = top; y < bottom; y += 1) {
        for (let x = left; x < right; x += 1) {
            intersection += first.bits[(y - first.top) * first.width + (x - first.left)]
                & second.bits[(y - second.top) * second.width + (x - second.left)];
        }
    }
    const union = area(first) + area(second) - intersection;
    return union > 0 ? intersection / union : 0;
}
