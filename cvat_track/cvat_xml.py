"""CVAT for video 1.1 XML: read people's shapes, write tracked results back.

The document is kept as parsed: people's tracks, other labels, attributes and the
``<meta>`` block stay exactly as they were; the tool only sets ``group_id`` on people's
tracks that had none, removes its own earlier output (``source="auto"`` tracks in an
object's group) and appends its new tracks.

In this format every annotation is a ``<track>``. A track of one visible mask stands for
a mask shape (CVAT exports its mask shapes so and imports mask tracks as one shape):
masks are written as one such track per frame. Masks are ``<mask rle="r0, r1, ..."
left top width height>``: the API's runs without their box, ``width = right - left +
1``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from cvat_track.objects import AUTO, Plan, Shape, Track

ELEMENT_TYPES = {"box": "rectangle", "polygon": "polygon", "mask": "mask"}
TYPE_ELEMENTS = {v: k for k, v in ELEMENT_TYPES.items()}


class XmlError(ValueError):
    """The XML is not CVAT for video 1.1 annotations this tool can read."""


def _flag(element: ET.Element, name: str) -> bool:
    return element.get(name, "0") == "1"


def _points(element: ET.Element) -> list[float]:
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
        raise XmlError(f"a <{kind}> on frame {element.get('frame')} is malformed") from error
    return [*runs, left, top, left + width - 1, top + height - 1]


class CvatVideoXml:
    """One CVAT for video 1.1 annotations file."""

    def __init__(self, path: Path) -> None:
        try:
            self.tree = ET.parse(path)
        except ET.ParseError as error:
            raise XmlError(f"{path} is not XML: {error}") from error
        self.root = self.tree.getroot()
        if self.root.tag != "annotations":
            raise XmlError(f"{path} is not CVAT annotations (root <{self.root.tag}>)")
        if self.root.find("image") is not None:
            raise XmlError(f"{path} is CVAT for images; export the job as CVAT for video 1.1")

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

    def read(self) -> tuple[list[Shape], list[Track]]:
        """Mask tracks of one visible shape as shapes (as CVAT imports them); every
        other track as a track."""
        shapes, tracks = [], []
        for element in self.root.findall("track"):
            group = int(element.get("group_id", "0") or 0)
            source = element.get("source", "manual")
            label = element.get("label", "")
            members = [
                Shape(
                    type=ELEMENT_TYPES[child.tag],
                    frame=int(child.get("frame")),
                    points=_points(child),
                    label=label,
                    group=group,
                    source=source,
                    outside=_flag(child, "outside"),
                    keyframe=child.get("keyframe", "1") == "1",
                    ref=child,
                )
                for child in element
                if child.tag in ELEMENT_TYPES
            ]
            visible = [s for s in members if not s.outside]
            if members and all(s.type == "mask" for s in members) and len(visible) == 1:
                visible[0].ref = element
                shapes.append(visible[0])
            else:
                tracks.append(Track(label, members, group, source, ref=element))
        return shapes, tracks

    def apply(self, plan: Plan, new_shapes: list[Shape], new_tracks: list[Track]) -> None:
        """Group ids for regrouped people's items, earlier output removed, results added."""
        for item in plan.regrouped:
            element = item.ref
            if isinstance(item, Shape) and element.tag != "track":
                raise XmlError("a shape inside a track cannot be regrouped alone")
            element.set("group_id", str(item.group))
        for item in [*plan.replaced_shapes, *plan.replaced_tracks]:
            self.root.remove(item.ref)
        next_id = 1 + max((int(t.get("id", -1)) for t in self.root.findall("track")), default=-1)
        for track in [*(Track(s.label, [s], s.group, s.source) for s in new_shapes), *new_tracks]:
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
                _shape_element(element, shape)

    def write(self, path: Path) -> None:
        ET.indent(self.tree, space="  ")
        self.tree.write(path, encoding="utf-8", xml_declaration=True)


def _shape_element(parent: ET.Element, shape: Shape) -> ET.Element:
    attributes = {
        "frame": str(shape.frame),
        "keyframe": "1" if shape.keyframe else "0",
        "outside": "1" if shape.outside else "0",
        "occluded": "0",
        "z_order": "0",
    }
    points = shape.points
    if shape.type == "rectangle":
        attributes |= dict(zip(("xtl", "ytl", "xbr", "ybr"), (f"{v:.2f}" for v in points)))
    elif shape.type == "polygon":
        pairs = zip(points[0::2], points[1::2])
        attributes["points"] = ";".join(f"{x:.2f},{y:.2f}" for x, y in pairs)
    else:
        *runs, left, top, right, bottom = (int(v) for v in points)
        attributes |= {
            "rle": ", ".join(str(r) for r in runs),
            "left": str(left),
            "top": str(top),
            "width": str(right - left + 1),
            "height": str(bottom - top + 1),
        }
    return ET.SubElement(parent, TYPE_ELEMENTS[shape.type], attributes)


__all__ = ["AUTO", "CvatVideoXml", "XmlError"]
