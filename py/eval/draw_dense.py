"""Drawing detections and segmentations onto images (pure functions returning PIL images).

Colours come from a fixed palette indexed by label, so the same class has the same colour in every
picture and every run.
"""
import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def palette(n):
    """n distinct RGB colours (uint8 (n, 3)): hues spaced by the golden ratio, alternating brightness."""
    colours = [colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.75, 1.0 if k % 2 == 0 else 0.8)
               for k in range(n)]
    return (np.array(colours).reshape(-1, 3) * 255).round().astype(np.uint8)


def to_uint8_image(image):
    """uint8 (H,W,3) from uint8 (H,W,3) / (H,W) or a float (3,H,W) / (H,W,3) image in [0,1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must be (H,W,3), (H,W) or (3,H,W), got shape {image.shape}")
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(image, 3, axis=2) if image.shape[-1] == 1 else image)


def _font(size=11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType support
        return ImageFont.load_default()


def _label_text(draw, xy, text, colour, font, image_width):
    """Text on a filled box of the class colour, kept inside the image."""
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    w, h = r - l + 4, b - t + 2
    x = min(max(xy[0], 0), max(image_width - w, 0))
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    draw.rectangle([x, y, x + w, y + h], fill=tuple(int(c) for c in colour))
    dark = sum(int(c) for c in colour) > 380
    draw.text((x + 2 - l, y + 1 - t), text, fill=(0, 0, 0) if dark else (255, 255, 255), font=font)


def _array(x, dtype=None):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.astype(dtype) if dtype is not None else x


def draw_detections(image, boxes, labels, scores, masks=None, class_names=None, score_threshold=0.5,
                    mask_alpha=0.45):
    """Boxes (xyxy px), translucent masks ((N,H,W) or (N,1,H,W), >= 0.5 is inside) and "name 0.93"
    captions for the detections scoring >= score_threshold; class_names[label] names a label."""
    rgb = to_uint8_image(image).copy()
    boxes, labels, scores = _array(boxes, np.float64).reshape(-1, 4), _array(labels, np.int64), _array(scores)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(f"boxes, labels and scores must have the same length, got {len(boxes)}, {len(labels)}, "
                         f"{len(scores)}")
    keep = np.nonzero(scores >= score_threshold)[0]
    colours = palette(int(labels.max()) + 1 if len(labels) else 1)
    if masks is not None:
        masks = _array(masks)
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.shape != (len(labels), *rgb.shape[:2]):
            raise ValueError(f"masks must be (N,H,W) = ({len(labels)}, {rgb.shape[0]}, {rgb.shape[1]}), "
                             f"got {masks.shape}")
        out = rgb.astype(np.float64)
        for k in keep[np.argsort(scores[keep])]:  # best on top
            inside = masks[k] >= 0.5
            out[inside] = (1 - mask_alpha) * out[inside] + mask_alpha * colours[labels[k]]
        rgb = out.round().astype(np.uint8)
    picture = Image.fromarray(rgb)
    draw, font = ImageDraw.Draw(picture), _font()
    for k in keep:
        colour = tuple(int(c) for c in colours[labels[k]])
        draw.rectangle(boxes[k].tolist(), outline=colour, width=2)
        name = class_names[labels[k]] if class_names is not None else str(int(labels[k]))
        _label_text(draw, (int(boxes[k][0]), int(boxes[k][1])), f"{name} {float(scores[k]):.2f}", colour, font,
                    picture.width)
    return picture


def draw_segmentation(image, label_map, num_classes, class_names=None, alpha=0.5, ignore_index=255):
    """The label map blended over the image (ignored pixels left as they are); with class_names, a legend
    of the classes present is added on the right."""
    rgb = to_uint8_image(image)
    label_map = _array(label_map, np.int64)
    if label_map.shape != rgb.shape[:2]:
        raise ValueError(f"label_map must be (H,W) = {rgb.shape[:2]} like the image, got {label_map.shape}")
    colours = palette(num_classes)
    valid = (label_map != ignore_index) & (label_map >= 0) & (label_map < num_classes)
    out = rgb.astype(np.float64)
    out[valid] = (1 - alpha) * out[valid] + alpha * colours[label_map[valid]]
    picture = Image.fromarray(out.round().astype(np.uint8))
    if class_names is None:
        return picture
    present = np.unique(label_map[valid]).tolist()
    font, row = _font(), 14
    width = 16 + max([int(ImageDraw.Draw(picture).textlength(class_names[c], font=font)) for c in present] + [40])
    legend = Image.new("RGB", (width + 8, max(picture.height, row * len(present) + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, c in enumerate(present):
        y = 2 + i * row
        draw.rectangle([4, y + 1, 14, y + 11], fill=tuple(int(v) for v in colours[c]))
        draw.text((18, y), class_names[c], fill=(0, 0, 0), font=font)
    canvas = Image.new("RGB", (picture.width + legend.width, legend.height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    canvas.paste(legend, (picture.width, 0))
    return canvas


def _wrap(draw, text, font, width):
    """text as lines that fit `width` pixels, split at spaces (a single longer word keeps its own line)."""
    lines = []
    for word in str(text).split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def side_by_side(images, titles=None, gap=4):
    """Images (PIL or arrays) in a row on white, each under its title (wrapped to the image's width)."""
    pictures = [im if isinstance(im, Image.Image) else Image.fromarray(to_uint8_image(im)) for im in images]
    if titles is not None and len(titles) != len(pictures):
        raise ValueError(f"titles must have one entry per image ({len(pictures)}), got {len(titles)}")
    if not pictures:
        raise ValueError("side_by_side needs at least one image")
    font, line = _font(12), 14
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(measure, t, font, p.width - 4) for t, p in zip(titles, pictures)] if titles else None
    top = line * max(len(w) for w in wrapped) + 2 if titles else 0
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, top + max(p.height for p in pictures)), (255, 255, 255))
    draw, x = ImageDraw.Draw(canvas), 0
    for i, p in enumerate(pictures):
        canvas.paste(p.convert("RGB"), (x, top))
        if titles:
            for j, text in enumerate(wrapped[i]):
                draw.text((x + 2, 1 + j * line), text, fill=(0, 0, 0), font=font)
        x += p.width + gap
    return canvas
