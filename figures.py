"""The figures of predict.py. Each function draws one figure from tensors and returns it;
save() writes it. Layouts are constrained, so titles, labels and legends stay inside the
image whatever the number of classes."""
import math
import textwrap

import matplotlib
matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt
from matplotlib.ticker import LogFormatter, MaxNLocator
import torch

CLASSES_BESIDE = 12  # more classes go in a legend below the plot
CLASSES_OVERLAID = 4  # more classes' histograms go in a small plot each
CHANCE_PERCENT = 50  # the ROC AUC of a random score
LEGEND_COLUMNS_BELOW = 3


class PlainLogFormatter(LogFormatter):
    """The log axis ticks that matplotlib would label, written as plain numbers (0.6, 20)
    rather than 6e-01 or 2 x 10^1."""

    def __call__(self, x, pos=None):
        return f'{x:g}' if super().__call__(x, pos) else ''


def save(fig, path):
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def class_color(c, n_classes):
    """tab10 for up to ten classes; beyond that, evenly spaced colours of a continuous map."""
    return plt.cm.tab10(c) if n_classes <= 10 else plt.cm.turbo(c / (n_classes - 1))


def wrapped(title, fig, fontsize=12):
    """The title broken into lines that fit over the axes: about two thirds of the figure's
    width (a legend may take the rest), at about 0.55 em per character."""
    chars_per_line = max(20, int(fig.get_figwidth() * 72 * .65 / (.55 * fontsize)))
    return '\n'.join(textwrap.wrap(title, chars_per_line))


def class_legend(fig, ax):
    """The legend of a plot by class: one column beside the axes, or for many classes
    several columns below them, so that the axes keep their width."""
    n = len(ax.get_legend_handles_labels()[1])
    if n <= CLASSES_BESIDE:
        fig.legend(loc='outside right upper', markerscale=3, fontsize=8)
    else:
        fig.legend(loc='outside lower center', markerscale=3, fontsize=8, ncols=LEGEND_COLUMNS_BELOW)


def show(ax, image, **imshow):
    """Draws one image (C, H, W) in [0, 1]: one channel in shades of gray, three in colour."""
    image = image.detach().clamp(0, 1).cpu()
    if len(image) == 1:
        ax.imshow(image[0].numpy(), cmap='gray', vmin=0, vmax=1, **imshow)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), **imshow)


def tile(rows, gap, below=0):
    """Rows of images (each (n, C, H, W) in [0, 1]) on one white canvas (C, height, width), gap pixels
    apart and below pixels left free under each image (for a caption). One image on one axes draws
    in a fraction of the time of an axes per image."""
    c, h, w = rows[0].shape[1:]
    n_cols = max(len(images) for images in rows)
    canvas = torch.ones(c, len(rows) * (h + below + gap) - gap, n_cols * (w + gap) - gap)
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            top, left = r * (h + below + gap), i * (w + gap)
            canvas[:, top:top + h, left:left + w] = image.detach().float().clamp(0, 1).cpu()
    return canvas


def bare(ax):
    """An axes that shows an image and nothing of its own: no ticks, no frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def image_rows(rows, title, column_labels=None):
    """One row of images per (label, images) pair, the label on the left; images are
    (n, C, H, W) in [0, 1]; column_labels (e.g. the classes) under the columns when given."""
    n_cols = max(len(images) for _, images in rows)
    h, w = rows[0][1].shape[2:]
    gap = max(1, h // 14)
    fig, ax = plt.subplots(figsize=(max(n_cols, 4) + 1, len(rows) + .8 + .3 * bool(column_labels)),
                           layout='constrained')
    show(ax, tile([images for _, images in rows], gap))
    bare(ax)
    ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(len(rows))], [label for label, _ in rows])
    if column_labels:
        ax.set_xticks([i * (w + gap) + (w - 1) / 2 for i in range(len(column_labels))],
                      [textwrap.shorten(label, 12, placeholder='..') for label in column_labels], fontsize=7,
                      rotation=30 if max(map(len, column_labels)) > 6 else 0)
    fig.suptitle(wrapped(title, fig))
    return fig


def image_grid(images, title, captions=None, n_cols=8):
    """Images (n, C, H, W) in rows of n_cols, each with its caption (e.g. its class) below it
    when given."""
    n_rows = math.ceil(len(images) / n_cols)
    h, w = images.shape[2:]
    gap, below = max(1, h // 14), int(.25 * h) if captions else 0
    fig, ax = plt.subplots(figsize=(n_cols * 1.1, n_rows * (1.3 if captions else 1.1) + .8), layout='constrained')
    show(ax, tile([images[r * n_cols:(r + 1) * n_cols] for r in range(n_rows)], gap, below))
    bare(ax)
    for i, caption in enumerate(captions or []):
        x, y = (i % n_cols) * (w + gap) + (w - 1) / 2, (i // n_cols) * (h + below + gap) + h
        ax.text(x, y, textwrap.shorten(caption, 14, placeholder='..'), fontsize=8, ha='center', va='top')
    fig.suptitle(wrapped(title, fig))
    return fig


def scatter_by_class(ax, codes, labels, class_names, size, alpha=.6):
    codes, labels = codes.cpu(), labels.cpu()
    for c in labels.unique().tolist():
        keep = labels == c
        ax.scatter(codes[keep, 0], codes[keep, 1], s=size, alpha=alpha, color=class_color(c, len(class_names)),
                   label=class_names[c])


def codes_by_class(codes, labels, class_names, title, axis_names):
    """2-d codes as points coloured by class."""
    fig, ax = plt.subplots(figsize=(8, 6.5), layout='constrained')
    scatter_by_class(ax, codes, labels, class_names, size=3)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(wrapped(title, fig))
    class_legend(fig, ax)
    return fig


def decision_regions(regions, extent, codes, labels, class_names, title):
    """A grid of predicted classes (n x n, over extent = (x0, x1, y0, y1)) shaded, the codes on top."""
    fig, ax = plt.subplots(figsize=(8, 6.5), layout='constrained')
    n_classes = len(class_names)
    colors = matplotlib.colors.ListedColormap([class_color(c, n_classes) for c in range(n_classes)])
    ax.imshow(regions.cpu().numpy(), origin='lower', extent=extent, cmap=colors, vmin=-.5, vmax=n_classes - .5,
              alpha=.3, aspect='auto', interpolation='nearest')
    scatter_by_class(ax, codes, labels, class_names, size=2)
    ax.set_xlim(*extent[:2])  # the few codes outside the shaded box are left out
    ax.set_ylim(*extent[2:])
    ax.set_xlabel('z1')
    ax.set_ylabel('z2')
    ax.set_title(wrapped(title, fig))
    class_legend(fig, ax)
    return fig


def decoded_grid(images, axis, title, faded=None):
    """Images (n * n, C, H, W) decoded on an n x n grid of codes (axis: the n values of each
    coordinate), z2 growing upwards; the tiles of faded ((n, n) bool, row by row) washed toward white,
    so that what the decoder makes far from every code is not taken for what it learned."""
    n = len(axis[0])
    c, h, w = images.shape[1:]
    images = images.detach().float().clamp(0, 1).cpu().view(n, n, c, h, w)
    if faded is not None:
        images = torch.where(faded.view(n, n, 1, 1, 1), .25 * images + .75, images)
    mosaic = images.permute(2, 0, 3, 1, 4).reshape(c, n * h, n * w)
    fig, ax = plt.subplots(figsize=(9, 9), layout='constrained')
    show(ax, mosaic, extent=(0, n, 0, n))
    ticks = list(range(0, n, 4))
    ax.set_xticks([t + .5 for t in ticks], [f'{axis[0][t]:.2f}' for t in ticks])
    ax.set_yticks([t + .5 for t in ticks], [f'{axis[1][t]:.2f}' for t in ticks])
    ax.set_xlabel('z1')
    ax.set_ylabel('z2')
    ax.set_title(wrapped(title, fig))
    return fig


def histograms_by_class(values, labels, class_names, xlabel, title):
    """The density of values for each class over shared bins: outlines on one plot for a few
    classes; for more, a small plot per class (its density filled, all test images' outlined in
    gray behind it), so that ten outlines do not tangle."""
    values, labels = values.cpu(), labels.cpu()
    upper = values.quantile(.995).item()  # a few extreme values would squash the rest
    bins = [values.min().item() + (upper - values.min().item()) * i / 60 for i in range(61)]
    classes = labels.unique().tolist()
    if len(classes) <= CLASSES_OVERLAID:
        fig, ax = plt.subplots(figsize=(9, 5), layout='constrained')
        for c in classes:
            ax.hist(values[labels == c].numpy(), bins=bins, histtype='step', linewidth=1.5,
                    color=class_color(c, len(class_names)), label=class_names[c], density=True)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('density')
        class_legend(fig, ax)
    else:
        n_cols = min(5, len(classes))
        n_rows = math.ceil(len(classes) / n_cols)
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols + .6, 1.9 * n_rows + 1.2), sharex=True,
                                 squeeze=False, layout='constrained')
        for ax, c in zip(axes.flat, classes):
            ax.hist(values.numpy(), bins=bins, histtype='step', color='gray', linewidth=.8, density=True)
            ax.hist(values[labels == c].numpy(), bins=bins, histtype='stepfilled', alpha=.7,
                    color=class_color(c, len(class_names)), density=True)
            ax.set_yticks([])
            ax.text(.97, .95, textwrap.shorten(class_names[c], 24, placeholder='..'), transform=ax.transAxes,
                    ha='right', va='top', fontsize=8)
        for ax in axes.flat[len(classes):]:
            ax.axis('off')
        fig.supxlabel(f'{xlabel}; gray: all test images')
        fig.supylabel('density')
    fig.suptitle(wrapped(title, fig))
    return fig


def loss_curves(history, title):
    """Train and valid loss per epoch, one panel per part of the loss, the kept (best) epoch marked;
    from 3 epochs on, the scale fits the epochs after the first."""
    parts = [k[len('train_'):] for k in history[0] if k.startswith('train_')]
    # A part equal to the loss (an AE's recon without penalties) would only repeat its panel.
    parts = [p for p in parts if p == 'loss' or any(h[f'train_{p}'] != h['train_loss'] for h in history)]
    fig, axes = plt.subplots(1, len(parts), figsize=(max(7., 4.5 * len(parts)), 4), squeeze=False,
                             layout='constrained')
    epochs = [h['epoch'] for h in history]
    kept = min(history, key=lambda h: h['valid_loss'])['epoch']  # the best valid loss: the checkpoint's weights
    for ax, part in zip(axes[0], parts):
        for split, style in (('train', '-'), ('valid', '--')):
            ax.plot(epochs, [h[f'{split}_{part}'] for h in history], style, marker='.', label=split)
        ax.axvline(kept, color='gray', linewidth=.8, linestyle=':', label=f'kept: epoch {kept}')
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f'{part} per image (log scale)')
        ax.set_yscale('log')  # the first epochs fall steeply; later ones still show
        later = [h[f'{split}_{part}'] for h in history[1:] for split in ('train', 'valid')]
        if len(history) >= 3 and min(later) > 0:  # the first epoch's loss, often far above, left off the scale
            ax.set_ylim(min(later) / 1.1, max(later) * 1.1)
        # Plain numbers (20, 60), not 2 x 10^1, on the major and the labelled minor ticks.
        for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, .5)))
        ax.legend()
    fig.suptitle(wrapped(title, fig))
    return fig


def auroc_by_class(per_class, class_names, baselines, published, title):
    """Left: the ROC AUC of each score for each normal class, baselines as crosses. Right: the
    means, beside published means (name, percent) when given. For one class, its ROC AUCs as bars alone."""
    classes = list(per_class)
    names = list(per_class[classes[0]])
    if len(classes) == 1:  # one class: its ROC AUCs as the bars alone, no panel of one column of points
        fig, means_ax = plt.subplots(figsize=(8, 5), layout='constrained')
    else:
        fig, (ax, means_ax) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(3, 2), layout='constrained')
        roc_auc_points(ax, per_class, classes, names, class_names, baselines)
    rows = [(name, 100 * sum(per_class[c][name] for c in classes) / len(classes), plt.cm.tab10(i % 10))
            for i, name in enumerate(names)]
    rows += [(textwrap.shorten(name, 40, placeholder='..'), percent, 'lightgray') for name, percent in published]
    rows.sort(key=lambda row: row[1])
    # Bars start at chance, 50%: their lengths are what each score adds to a coin toss.
    means_ax.barh(range(len(rows)), [row[1] - CHANCE_PERCENT for row in rows], left=CHANCE_PERCENT,
                  color=[row[2] for row in rows])
    means_ax.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=8)
    for y, (_, percent, _) in enumerate(rows):
        means_ax.text(max(percent, CHANCE_PERCENT), y, f' {percent:.1f}', va='center', fontsize=8)
    low = min(row[1] for row in rows)
    means_ax.set_xlim(min(CHANCE_PERCENT, low - 5), 104)  # room for the labels of bars near 100
    what = (f'ROC AUC, %, normal class {class_names[classes[0]]}' if len(classes) == 1 else 'mean ROC AUC, %')
    means_ax.set_xlabel(f'{what}, from chance (50)' + ('; gray: published' if published else ''))
    fig.suptitle(wrapped(title, fig))
    return fig


def roc_auc_points(ax, per_class, classes, names, class_names, baselines):
    """The ROC AUC of each score (a colour each, baselines as crosses) for each normal class."""
    for i, name in enumerate(names):
        ax.plot(range(len(classes)), [100 * per_class[c][name] for c in classes], linestyle='none',
                marker='x' if name in baselines else 'o', color=plt.cm.tab10(i % 10), label=name)
    ax.set_xticks(range(len(classes)), [textwrap.shorten(class_names[c], 12, placeholder='..') for c in classes],
                  rotation=45, ha='right')
    ax.set_xlabel('normal class')
    ax.set_ylabel('ROC AUC, %')
    ax.axhline(50, color='gray', linewidth=.8, linestyle=':')
    ax.legend(fontsize=8)
