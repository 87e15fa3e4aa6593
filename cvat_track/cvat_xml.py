"""CVAT 1.1 XML: read people's shapes, write tracked results back.

Read: a CVAT for video 1.1 export (every annotation a ``<track>``; a track of one
visible mask stands for a mask shape, as CVAT exports mask shapes), plus the ``<image>``
elements this tool writes. Written: a file for CVAT's importer ("CVAT 1.1", which
reads ``<track>`` and ``<image>`` elements alike; CVAT 2.73 ``formats/cvat.py``
``load_anno``).

The document is kept as parsed: people's tracks, other labels, attributes and the
``<meta>`` block stay as they were. The tool sets ``group_id`` on people's items that
had none, removes its own earlier output of the tracked objects, adds its keyframes to
the objects' tracks, and writes masks as ``<image id="frame" name="..."><mask .../>
</image>``: CVAT's importer turns a mask ``<track>`` into a shape of group 0 but keeps
an ``<image>`` shape's ``group_id``, so masks stay with their object through an upload.
Every mask track of the file (people's, other runs') moves to that form too, its
content unchanged.
Masks are ``<mask rle="r0, r1, ..." left top width height>``: the API's runs without
their box, ``width = right - left + 1``.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from cvat_track.objects import AUTO, Shape, Track
from cvat_track.run import RunResult

ELEMENT_TYPES = {"box": "rectangle", "polygon": "polygon", "mask": "mask"}
TYPE_ELEMENTS = {v: k for k, v in ELEMENT_TYPES.items()}


class XmlError(ValueError):
    """The XML is not CVAT 1.1 annotations this tool can read."""


def _flag(element: ET.Element, name: str) -> bool:
    return element.get(name, "0") == "1"


def _points(element: ET.Element, frame: object) -> list[float]:
    kind = element.tag
    try:
        if kind == "box":
            return [float(element.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]
        if kind == "polygon":
            return [float(v) for pair in element.get("points").split(";") for v in pair.split(",")]
        left, top = int(element.get("left")), int(element.get("top"))
        width, height = int(element.get("width")), int(element.get("height"))
        runs = [int(v) for v in element.get("rle").split(",")]
    except (TypeError, ValueError) as error:
        raise XmlError(f"a <{kind}> on frame {frame} is malformed") from error
    return [*runs, left, top, left + width - 1, top + height - 1]


def _group(element: ET.Element) -> int:
    return int(element.get("group_id", "0") or 0)


class CvatVideoXml:
    """One CVAT 1.1 annotations file (a CVAT for video 1.1 export, or this tool's output)."""

    def __init__(self, path: Path) -> None:
        try:
            self.tree = ET.parse(path)
        except ET.ParseError as error:
            raise XmlError(f"{path} is not XML: {error}") from error
        self.root = self.tree.getroot()
        if self.root.tag != "annotations":
            raise XmlError(f"{path} is not CVAT annotations (root <{self.root.tag}>)")
        if any(e.tag in ("box", "polygon") for image in self._images() for e in image):
            raise XmlError(
                f"{path} is CVAT for images (it turns every frame of a track into a shape of "
                "its own); export the job as CVAT for video 1.1"
            )

    def _images(self) -> list[ET.Element]:
        return self.root.findall("image")

    def frame_size(self) -> tuple[int, int] | None:
        """(height, width) from ``<meta>``, when the export says."""
        size = self.root.find(".//meta//original_size")
        if size is None:
            return None
        return int(size.findtext("height")), int(size.findtext("width"))

    def start_frame(self) -> int:
        """The frame number of a job export's first frame (0 for a task export)."""
        value = self.root.findtext("meta/job/start_frame")
        return int(value) if value else 0

    def is_job_export(self) -> bool:
        return self.root.find("meta/job") is not None

    def read(self) -> tuple[list[Shape], list[Track]]:
        """Mask tracks of one visible shape and ``<image>`` masks as shapes (as CVAT
        imports them); every other track as a track."""
        shapes, tracks = [], []
        for element in self.root.findall("track"):
            group = _group(element)
            source = element.get("source", "manual")
            label = element.get("label", "")
            members = [
                Shape(
                    type=ELEMENT_TYPES[child.tag],
                    frame=int(child.get("frame")),
                    points=_points(child, child.get("frame")),
                    label=label,
                    group=group,
                    source=source,
                    outside=_flag(child, "outside"),
                    keyframe=child.get("keyframe", "1") == "1",
                    ref=child,
                )
                for child in element
                # keyframe="0": the exporter's interpolated copies, which CVAT's
                # importer drops too; a track is its keyframes.
                if child.tag in ELEMENT_TYPES and child.get("keyframe", "1") != "0"
            ]
            visible = [s for s in members if not s.outside]
            if members and all(s.type == "mask" for s in members) and len(visible) == 1:
                visible[0].ref = element
                shapes.append(visible[0])
            else:
                tracks.append(Track(label, members, group, source, ref=element))
        for image in self._images():
            frame = int(image.get("id"))
            shapes.extend(
                Shape(
                    type="mask",
                    frame=frame,
                    points=_points(child, frame),
                    label=child.get("label", ""),
                    group=_group(child),
                    source=child.get("source", "manual"),
                    ref=child,
                )
                for child in image
                if child.tag == "mask"
            )
        return shapes, tracks

    def apply(self, result: RunResult, frame_name: Callable[[int], str]) -> None:
        """Group ids for regrouped people's items, earlier output removed, the output
        added; ``frame_name(frame)`` names an ``<image>`` (CVAT matches it by name,
        else by its id, the frame number)."""
        plan = result.plan
        parents = {child: parent for parent in self.root.iter() for child in parent}
        for item in plan.regrouped:
            item.ref.set("group_id", str(item.group))
        for item in [*plan.replaced_shapes, *plan.replaced_tracks]:
            parents[item.ref].remove(item.ref)
        for track in result.rewritten_tracks:
            element = track.ref.ref
            element.set("group_id", str(track.group))
            for child in [c for c in element if c.tag in ELEMENT_TYPES]:
                element.remove(child)
            for shape in track.shapes:
                element.append(shape.ref if shape.ref is not None else _shape_element(shape))
        images: dict[int, ET.Element] = {int(i.get("id")): i for i in self._images()}

        def image(frame: int) -> ET.Element:
            if frame not in images:
                images[frame] = ET.SubElement(
                    self.root, "image", {"id": str(frame), "name": frame_name(frame)}
                )
            return images[frame]

        # Mask tracks (people's, other runs') become <image> masks: the form whose group
        # CVAT's importer keeps.
        # Read again: the mask tracks left after the removals, with their new groups.
        for shape in self.read()[0]:
            if shape.ref.tag == "track":
                self.root.remove(shape.ref)
                _image_mask(image(shape.frame), shape)
        for shape in result.new_shapes:
            _image_mask(image(shape.frame), shape)
        next_id = 1 + max((int(t.get("id", -1)) for t in self.root.findall("track")), default=-1)
        for track in result.new_tracks:
            element = ET.SubElement(
                self.root,
                "track",
                {
                    "id": str(next_id),
                    "label": track.label,
                    "source": track.source,
                    "group_id": str(track.group),
                },
            )
            next_id += 1
            for shape in track.shapes:
                element.append(_shape_element(shape))

    def write(self, path: Path) -> None:
        ET.indent(self.tree, space="  ")
        self.tree.write(path, encoding="utf-8", xml_declaration=True)


def _shape_attributes(shape: Shape) -> dict[str, str]:
    points = shape.points
    if shape.type == "rectangle":
        return dict(zip(("xtl", "ytl", "xbr", "ybr"), (f"{v:.2f}" for v in points)))
    if shape.type == "polygon":
        pairs = zip(points[0::2], points[1::2])
        return {"points": ";".join(f"{x:.2f},{y:.2f}" for x, y in pairs)}
    *runs, left, top, right, bottom = (int(v) for v in points)
    return {
        "rle": ", ".join(str(r) for r in runs),
        "left": str(left),
        "top": str(top),
        "width": str(right - left + 1),
        "height": str(bottom - top + 1),
    }


def _shape_element(shape: Shape) -> ET.Element:
    """A track's element (``<box>``, ``<polygon>``, ``<mask>``)."""
    attributes = {
        "frame": str(shape.frame),
        "keyframe": "1" if shape.keyframe else "0",
        "outside": "1" if shape.outside else "0",
        "occluded": "0",
        "z_order": "0",
        **_shape_attributes(shape),
    }
    return ET.Element(TYPE_ELEMENTS[shape.type], attributes)


def _image_mask(image: ET.Element, shape: Shape) -> ET.Element:
    """A mask shape inside an ``<image>``, as CVAT for images 1.1 writes it."""
    occluded, z_order, children = "0", "0", []
    if shape.ref is not None:  # a person's mask moved from its track form
        first = next(c for c in shape.ref if c.tag == "mask" and not _flag(c, "outside"))
        occluded, z_order = first.get("occluded", "0"), first.get("z_order", "0")
        children = [copy.deepcopy(a) for a in first.findall("attribute")]
    attributes = {
        "label": shape.label,
        "source": shape.source,
        "occluded": occluded,
        **_shape_attributes(shape),
        "z_order": z_order,
        "group_id": str(shape.group),
    }
    element = ET.SubElement(image, "mask", attributes)
    element.extend(children)
    return element


__all__ = ["AUTO", "CvatVideoXml", "XmlError"]
