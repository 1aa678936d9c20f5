"""figures.py: every figure keeps its titles, labels and legend inside the image and off its
neighbours' axes, with 2, 10 or many classes and long class names."""
import re

import matplotlib.pyplot as plt
import pytest
import torch

import figures

HISTORY = [{'epoch': e, 'lr': 1e-3, 'train_loss': 60. / e, 'train_recon': 50. / e, 'train_kl': 10. / e,
            'valid_loss': 62. / e, 'valid_recon': 51. / e, 'valid_kl': 11. / e} for e in range(1, 21)]


def class_names(n):
    return [f'class {c} with a rather long name' if c % 3 == 0 else f'c{c}' for c in range(n)]


def every_figure(n_classes):
    torch.manual_seed(0)
    names = class_names(n_classes)
    labels = torch.arange(500) % n_classes
    codes = torch.randn(500, 2) + labels[:, None].float()
    # Gray images with few classes, colour ones (wider than tall) with many.
    shape = (1, 28, 28) if n_classes <= 10 else (3, 20, 36)
    images = torch.rand(16, *shape)
    return {
        'codes': figures.codes_by_class(codes, labels, names, 'test codes', ('z1', 'z2')),
        'regions': figures.decision_regions(labels[:400].view(20, 20), (-3., 3., -3., 3.), codes, labels, names,
                                            'decision regions of a 5-NN classifier on the training codes, '
                                            'test codes on top'),
        'histograms': figures.histograms_by_class(torch.rand(500), labels, names, 'anomaly score',
                                                  'anomaly scores of the test images by class; classes not trained '
                                                  'on as anomalies: ROC AUC 0.840'),
        'grid': figures.image_grid(images, 'the 16 most anomalous test images, with their class',
                                   captions=[names[c % n_classes] for c in range(16)]),
        'rows': figures.image_rows([('original', images[:10]), ('reconstruction', images[:10])],
                                   'test images and their reconstructions'),
        'manifold': figures.decoded_grid(torch.rand(400, *shape), [torch.linspace(-2, 2, 20)] * 2, 'a decoded grid'),
        'curves': figures.loss_curves(HISTORY, 'vae.pth: losses per epoch'),
    }


def inside(box, frame, margin=1.):
    return (frame.x0 - margin <= box.x0 and box.x1 <= frame.x1 + margin and frame.y0 - margin <= box.y0
            and box.y1 <= frame.y1 + margin)


@pytest.mark.parametrize('n_classes', [2, 10, 40])
def test_labels_stay_inside_the_image_and_off_the_other_axes(n_classes):
    for name, fig in every_figure(n_classes).items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        # An axes' tight box holds what it draws: title, axis labels, the tick labels shown.
        drawn = [(ax, ax.get_tightbbox(renderer)) for ax in fig.axes if ax.axison]
        drawn += [(None, artist.get_window_extent(renderer)) for artist in fig.legends + fig.texts]
        if fig._suptitle is not None:
            drawn.append((None, fig._suptitle.get_window_extent(renderer)))
        for owner, box in drawn:
            assert inside(box, fig.bbox), (name, owner)
            for ax in fig.axes:
                if ax is not owner and ax.axison:
                    assert not box.overlaps(ax.get_window_extent(renderer).shrunk(.96, .96)), (name, owner, ax)
        plt.close(fig)


def test_loss_curves_show_whole_epochs_and_plain_numbers():
    fig = figures.loss_curves(HISTORY, 'losses')
    fig.canvas.draw()
    for ax in fig.axes:
        epochs = [float(t.get_text().replace('\u2212', '-')) for t in ax.get_xticklabels() if t.get_text()]
        assert epochs and all(e == int(e) for e in epochs)
        y_labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
        assert y_labels and all(re.fullmatch(r'\d+(\.\d+)?', y) for y in y_labels), y_labels
    plt.close(fig)
