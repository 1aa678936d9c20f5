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
        'oneclass': figures.auroc_by_class(one_class_aurocs(n_classes), names, ['pca_recon'],
                                           [('a published method with a long name', 90.)], 'one class normal'),
    }


def one_class_aurocs(n_classes):
    """Made-up ROC AUCs of two scores and a baseline for each class, one score's mean below chance."""
    return {c: {'recon': .9 - .01 * (c % 7), 'code_knn': .4, 'pca_recon': .8} for c in range(n_classes)}


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


@pytest.mark.parametrize('n_classes', [2, 10])
def test_each_figure_has_one_title(n_classes):
    for name, fig in every_figure(n_classes).items():
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        titles += [fig._suptitle.get_text()] if fig._suptitle else []
        assert len(titles) == 1, (name, titles)
        plt.close(fig)


def test_a_log_axis_says_so():
    fig = figures.loss_curves(HISTORY, 'losses')
    assert all(ax.get_yscale() == 'log' and ax.get_ylabel().endswith('(log scale)') for ax in fig.axes)
    plt.close(fig)


def test_the_one_class_means_are_bars_from_chance():
    fig = figures.auroc_by_class(one_class_aurocs(3), class_names(3), ['pca_recon'], [('published', 90.)], 'title')
    bars = {round(bar.get_x() + bar.get_width(), 6): bar for bar in fig.axes[1].patches}
    assert set(bars) == {90., 80., 40., 89.}  # each mean's bar ends at the mean, published 90 included
    assert all(bar.get_x() == 50. for bar in bars.values())
    assert fig.axes[1].get_xlim()[0] < 40.  # a mean below chance shows too
    plt.close(fig)


def test_one_normal_class_is_its_bars_alone():
    per_class = dict(list(one_class_aurocs(3).items())[:1])
    fig = figures.auroc_by_class(per_class, class_names(3), ['pca_recon'], [], 'title')
    assert len(fig.axes) == 1 and 'normal class' in fig.axes[0].get_xlabel()
    assert len(fig.axes[0].patches) == len(next(iter(per_class.values())))  # a bar for each score
    plt.close(fig)


def test_ten_classes_of_anomaly_scores_get_a_plot_each():
    labels = torch.arange(500) % 10
    fig = figures.histograms_by_class(torch.rand(500) + labels, labels, class_names(10), 'score', 'title')
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == 10
    for c, ax in enumerate(shown):
        assert len(ax.patches) == 2  # the class's own histogram and the gray one of all images
        assert [t.get_text() for t in ax.texts] == [figures.textwrap.shorten(class_names(10)[c], 24,
                                                                               placeholder='..')]
    plt.close(fig)


def test_loss_curves_mark_the_kept_epoch_and_fit_the_later_epochs():
    history = [{'epoch': e, 'train_loss': loss, 'valid_loss': loss + v} for e, (loss, v) in
               enumerate([(300., 50.), (30., 2.), (25., 1.), (24., 3.)], start=1)]
    fig = figures.loss_curves(history, 'title')
    ax = fig.axes[0]
    kept = [line for line in ax.get_lines() if line.get_label().startswith('kept')]
    assert [line.get_label() for line in kept] == ['kept: epoch 3'] and list(kept[0].get_xdata()) == [3, 3]
    low, high = ax.get_ylim()
    assert low < 24 and 32 < high < 300  # the first epoch's 300 and 350 are left above the scale
    plt.close(fig)
