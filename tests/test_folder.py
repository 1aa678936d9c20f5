"""Training on a folder of one's own images: the layouts, the conversions, the cache, the errors,
and every architecture and figure on images that are not 1 x 28 x 28."""
import json
import os

import numpy as np
import pytest
import torch

import config
import data_loader
import oneclass
import predict
import train
from config import make_config
from data_loader import (DataError, class_indices, class_names, load_dataset, load_folder, write_idx,
                         write_image_folder)
from helpers import TINY, expect_usage_error, make_images, printed_losses, run_script, train_in_process, without_times
from model import build_model, from_rows, to_rows
from utils import CliError, run_cli


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path_factory, monkeypatch):
    """Every test gets a cache folder of its own (outside its tmp_path, where the images go)."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path_factory.mktemp('cache')))


def colour_images(n, seed, size=(28, 28)):
    """make_images() in colour: the class's bars red on a blue-green background, as (N, 3, H, W)."""
    gray, labels = make_images(n, seed)
    gray = torch.from_numpy(gray)[:, None]
    images = torch.cat([gray, 255 - gray, gray // 2], 1)
    return data_loader.convert(images, size), torch.from_numpy(labels).long()


def sorted_by_label(images, labels):
    order = np.argsort(labels, kind='stable')
    return images[order], labels[order]


def test_a_folder_and_idx_files_of_the_same_images_train_alike(tmp_path, capsys):
    """The same images in the same order, as IDX files and as PNG class folders: the same seed
    gives the same losses, epoch by epoch."""
    images, labels = sorted_by_label(*make_images(300, seed=0))
    test_images, test_labels = sorted_by_label(*make_images(60, seed=1))
    idx_dir, png_dir = tmp_path / 'idx', tmp_path / 'png'
    os.makedirs(idx_dir)
    for prefix, x, y in (('train', images, labels), ('t10k', test_images, test_labels)):
        write_idx(str(idx_dir / f'{prefix}-images-idx3-ubyte'), x)
        write_idx(str(idx_dir / f'{prefix}-labels-idx1-ubyte'), y)
    write_image_folder(str(png_dir / 'train'), torch.from_numpy(images)[:, None], labels)
    write_image_folder(str(png_dir / 'test'), torch.from_numpy(test_images)[:, None], test_labels)

    histories = []
    for flags in (['--dataset', 'mnist', '--data_dir', str(idx_dir)],
                  ['--dataset', 'folder', '--data_dir', str(png_dir)]):
        model_fn = str(tmp_path / f'{flags[1]}.pth')
        histories.append(without_times(train_in_process('--model_fn', model_fn, *flags, *TINY)['history']))
    assert histories[0] == histories[1]
    for train_set in (True, False):
        idx, folder = (load_dataset(dataset, str(where), train_set) for dataset, where in
                       (('mnist', idx_dir), ('folder', png_dir)))
        assert torch.equal(idx[0], folder[0]) and torch.equal(idx[1], folder[1])


def test_a_folder_without_train_and_test_holds_out_the_same_seeded_share(tmp_path):
    images, _ = colour_images(50, seed=0)
    write_image_folder(str(tmp_path), images)  # no labels: a flat folder
    train_images, train_labels = load_folder(str(tmp_path), True)
    test_images, test_labels = load_folder(str(tmp_path), False)
    assert len(test_images) == int(50 * data_loader.HELD_OUT_SHARE) and len(train_images) == 50 - len(test_images)
    together = torch.cat([train_images, test_images]).flatten(1)
    assert len(torch.unique(together, dim=0)) == len(torch.unique(images.flatten(1), dim=0))  # every image once
    assert torch.equal(load_folder(str(tmp_path), False)[0], test_images)  # the same held-out images every time
    assert train_labels.eq(0).all() and test_labels.eq(0).all()
    assert class_names('folder', str(tmp_path)) is None


def test_class_folders_give_labels_by_sorted_name_and_test_classes_by_the_training_names(tmp_path):
    images, labels = colour_images(40, seed=0)
    names = ['ant', 'bee', 'cat', 'dog', 'eel', 'fox', 'gnu', 'hen', 'ibis', 'jay']
    write_image_folder(str(tmp_path / 'train'), images, labels, names)
    keep = labels >= 5  # the test folder has only the last five classes
    write_image_folder(str(tmp_path / 'test'), images[keep], labels[keep], names)
    assert class_names('folder', str(tmp_path)) == names
    train_images, train_labels = load_folder(str(tmp_path), True)
    test_images, test_labels = load_folder(str(tmp_path), False)
    order = np.argsort(labels.numpy(), kind='stable')
    assert torch.equal(train_labels, labels[order]) and torch.equal(train_images, images[order])
    assert sorted(test_labels.unique().tolist()) == [5, 6, 7, 8, 9]
    assert class_indices(['cat', '1', 'jay'], names) == [1, 2, 9]


def test_class_names_are_looked_up_before_indices():
    names = ['1', '2', '5']
    assert class_indices(['1'], names) == [0]  # the folder named 1, not index 1
    assert class_indices(['2', 0], names) == [0, 1]
    with pytest.raises(CliError, match='--target_labels 7: not a class of this data set'):
        class_indices(['7'], names)
    with pytest.raises(CliError, match='no classes'):
        class_indices(['1'], None)


@pytest.mark.parametrize('ext', ['.png', '.jpg'])
def test_gray_and_colour_are_converted_on_request_and_refused_mixed_without(tmp_path, ext):
    images, _ = colour_images(6, seed=0)
    write_image_folder(str(tmp_path), images[:3], ext=ext)
    gray = write_image_folder(str(tmp_path / 'gray'), images[3:, :1], ext=ext)
    for name in os.listdir(gray):
        os.rename(os.path.join(gray, name), str(tmp_path / f'gray_{name}'))
    os.rmdir(gray)
    with pytest.raises(DataError, match=r'gray_000000.* is gray and .*000000.* is colour; give --channels 1 or '
                                        r'--channels 3'):
        data_loader.read_folder(str(tmp_path))
    as_colour = data_loader.read_folder(str(tmp_path), channels=3)[0]
    as_gray = data_loader.read_folder(str(tmp_path), channels=1)[0]
    assert as_colour.shape == (6, 3, 28, 28) and as_gray.shape == (6, 1, 28, 28)
    if ext == '.png':  # lossless: the colour files come back exactly, gray ones repeated in three channels
        assert torch.equal(as_colour[:3], images[:3])
        assert torch.equal(as_colour[3:], images[3:, :1].expand(-1, 3, -1, -1))


def test_jpeg_files_decode_close_to_what_was_written(tmp_path):
    # A smooth image, which JPEG at quality 95 keeps within a few levels of 255.
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8)
    image = torch.stack([ramp[None].expand(32, -1), ramp[:, None].expand(-1, 32), 255 - ramp[None].expand(32, -1)])
    write_image_folder(str(tmp_path), image[None].expand(5, -1, -1, -1), ext='.jpg')
    decoded = data_loader.read_folder(str(tmp_path))[0]
    assert decoded.shape == (5, 3, 32, 32)
    assert (decoded.float() - image.float()).abs().mean() < 255 * .02


def test_different_sizes_need_image_size_and_are_resized_with_it(tmp_path):
    write_image_folder(str(tmp_path / 'a'), colour_images(3, seed=0, size=(28, 28))[0])
    write_image_folder(str(tmp_path / 'b'), colour_images(3, seed=1, size=(17, 33))[0])
    with pytest.raises(DataError, match=r'a/000000.png is 28 x 28 and .*b/000000.png is 17 x 33; give --image_size'):
        data_loader.read_folder(str(tmp_path))
    images, labels = data_loader.read_folder(str(tmp_path), image_size=(20, 24))
    assert images.shape == (6, 3, 20, 24) and labels.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize('make, match', [
    (lambda root: None, 'an empty folder'),
    (lambda root: open(os.path.join(root, 'notes.txt'), 'w').close(), 'a folder with no images'),
    (lambda root: (write_image_folder(root, colour_images(2, 0)[0], torch.tensor([0, 1])),
                   os.makedirs(os.path.join(root, 'empty_class'))), 'empty_class: a class folder with no images'),
    (lambda root: (write_image_folder(root, colour_images(2, 0)[0], torch.tensor([0, 1])),
                   write_image_folder(root, colour_images(1, 0)[0])), '000000.png: an image beside the class folders'),
    (lambda root: (write_image_folder(root, colour_images(2, 0)[0]),  # a PNG cut off after 200 bytes
                   open(os.path.join(root, 'cut.png'), 'wb').write(
                       open(os.path.join(root, '000000.png'), 'rb').read()[:200])),
     'cut.png: cannot decode it as an image'),
    (lambda root: (write_image_folder(root, colour_images(2, 0)[0]),
                   open(os.path.join(root, 'text.jpg'), 'w').write('not an image')),
     'text.jpg: cannot decode it as an image (Unsupported image file)'),
])
def test_bad_folders_are_one_line_errors_naming_the_file(tmp_path, capsys, make, match):
    root = str(tmp_path / 'images')
    os.makedirs(root)
    make(root)
    expect_usage_error(train.main, 'train.py', ['--model_fn', str(tmp_path / 'm.pth'), '--dataset', 'folder',
                                                '--data_dir', root, *TINY], capsys, match)
    assert not os.path.exists(tmp_path / 'm.pth')


def test_every_bad_file_is_named_in_one_error_up_to_a_cap(tmp_path, capsys):
    root = str(tmp_path / 'images')
    write_image_folder(root, colour_images(3, 0)[0])
    for i in range(data_loader.MAX_NAMED_FILES + 2):
        open(os.path.join(root, f'bad{i}.png'), 'w').write('not an image')
    message = expect_usage_error(train.main, 'train.py', ['--model_fn', str(tmp_path / 'm.pth'), '--dataset',
                                                           'folder', '--data_dir', root, *TINY], capsys, 'bad0.png')
    named = [f'bad{i}.png' for i in range(data_loader.MAX_NAMED_FILES + 2) if f'bad{i}.png:' in message]
    assert len(named) == data_loader.MAX_NAMED_FILES and message.count('cannot decode') == data_loader.MAX_NAMED_FILES
    assert 'and 2 more' in message and message.strip().endswith('replace or remove them')
    assert not os.path.exists(tmp_path / 'm.pth')


def test_two_bad_files_are_both_named(tmp_path):
    root = str(tmp_path / 'images')
    write_image_folder(root, colour_images(3, 0)[0])
    for name in ('cut.png', 'text.jpg'):
        open(os.path.join(root, name), 'w').write('not an image')
    with pytest.raises(DataError, match=r'cut\.png: cannot decode .*; .*text\.jpg: cannot decode .*; replace or '
                                        r'remove them$'):
        data_loader.read_folder(root)


def test_the_cache_is_read_instead_of_the_files_until_the_folder_changes(tmp_path, monkeypatch):
    root = str(tmp_path / 'images')
    write_image_folder(root, colour_images(10, seed=0)[0])
    first = data_loader.read_folder(root)[0]
    assert len(os.listdir(data_loader.cache_folder())) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError('decoded again')
    with monkeypatch.context() as m:
        m.setattr(data_loader, 'decode_images', no_decoding)
        assert torch.equal(data_loader.read_folder(root)[0], first)

    changed = colour_images(1, seed=5)[0]
    write_image_folder(root, changed)  # rewrites 000000.png: another size or time
    os.utime(os.path.join(root, '000000.png'), ns=(1, 1))
    again = data_loader.read_folder(root)[0]
    assert torch.equal(again[0], changed[0]) and torch.equal(again[1:], first[1:])
    assert len(os.listdir(data_loader.cache_folder())) == 1  # the stale cache is gone


def test_an_unwritable_cache_is_a_note_and_the_images_still_load(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('')
    monkeypatch.setenv('XDG_CACHE_HOME', str(blocker))
    write_image_folder(str(tmp_path / 'images'), colour_images(4, seed=0)[0])
    assert data_loader.read_folder(str(tmp_path / 'images'))[0].shape == (4, 3, 28, 28)
    assert 'cannot write the image cache' in capsys.readouterr().out


@pytest.mark.parametrize('arch', ['mlp', 'conv', 'lstm'])
@pytest.mark.parametrize('model', ['ae', 'vae'])
def test_every_architecture_takes_any_image_shape(arch, model):
    config = make_config(model=model, arch=arch, btl_size=3, hidden_sizes=[8, 16] if arch == 'conv' else [16],
                         image_shape=[3, 17, 30])
    net = build_model(config)
    x = torch.rand(4, 3 * 17 * 30)
    assert net(x).shape == x.shape
    loss, _ = net.loss(x)
    loss.backward()


def test_rows_of_a_colour_image_hold_its_channels_side_by_side():
    x = torch.arange(2 * 3 * 4 * 5.).view(2, -1)
    rows = to_rows(x, (3, 4, 5))
    assert rows.shape == (2, 4, 15)
    assert torch.equal(rows[0, 1, 5:10], x.view(2, 3, 4, 5)[0, 1, 1])  # row 1 of channel 1
    assert torch.equal(from_rows(rows, (3, 4, 5)), x)


def test_train_and_predict_on_colour_class_folders_by_name(tmp_path, capsys):
    images, labels = colour_images(200, seed=0, size=(20, 24))
    names = [f'kind {c}' for c in range(10)]
    root = write_image_folder(str(tmp_path / 'images'), images, labels, names)
    model_fn = str(tmp_path / 'm.pth')
    checkpoint = train_in_process('--model_fn', model_fn, '--dataset', 'folder', '--data_dir', root, '--arch', 'conv',
                                  '--btl_size', '2', '--target_labels', 'kind 3', 'kind 5', '7', *TINY)
    assert checkpoint['config'].model.image_shape == [3, 20, 24]
    assert checkpoint['config'].data.target_labels == [3, 5, 7]
    out_dir = tmp_path / 'predict'
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--gpu_id', '-1', '--out_dir', str(out_dir)]),
            'predict.py')
    out = capsys.readouterr().out
    assert 'folder test set: ' in out and 'of 3 x 20 x 24 (classes 3 5 7)' in out
    for name in ('reconstructions', 'latent', 'boundary', 'manifold', 'samples', 'interp', 'anomalies'):
        assert os.path.getsize(out_dir / f'{name}.png') > 0
    # the interpolation's ends by class name, as --target_labels takes them
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--gpu_id', '-1', '--out_dir', str(tmp_path / 'interp'),
                                  '--what', 'interp', '--interp_classes', 'kind 5', '3']), 'predict.py')
    assert os.path.getsize(tmp_path / 'interp' / 'interp.png') > 0


def test_predict_on_a_folder_without_classes_skips_what_needs_them(tmp_path, capsys):
    root = write_image_folder(str(tmp_path / 'images'), colour_images(100, seed=0)[0][:, :1])
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--dataset', 'folder', '--data_dir', root, '--btl_size', '2', *TINY)
    out_dir = tmp_path / 'predict'
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--gpu_id', '-1', '--out_dir', str(out_dir)]), 'predict.py')
    out = capsys.readouterr().out
    assert 'skipped what needs classes, which this data set has not: kNN accuracy, boundary' in out
    assert '(no classes)' in out and '5-NN accuracy' not in out
    assert not os.path.exists(out_dir / 'boundary.png') and os.path.exists(out_dir / 'interp.png')
    expect_usage_error(predict.main, 'predict.py', ['--model_fn', model_fn, '--gpu_id', '-1', '--out_dir',
                                                    str(tmp_path / 'p2'), '--what', 'boundary'], capsys,
                       '--what boundary needs classes')
    expect_usage_error(train.main, 'train.py', ['--model_fn', str(tmp_path / 'n.pth'), '--dataset', 'folder',
                                                '--data_dir', root, '--target_labels', '0', *TINY], capsys,
                       '--target_labels: this data set has no classes')


@pytest.mark.slow
def test_a_second_run_reads_the_cache_and_trains_alike(tmp_path):
    root = write_image_folder(str(tmp_path / 'images'), colour_images(60, seed=0)[0])
    flags = ['--dataset', 'folder', '--data_dir', root, *TINY, '--n_epochs', '1', '--overwrite']
    runs = [run_script('train.py', '--model_fn', str(tmp_path / f'{i}.pth'), *flags, env=os.environ) for i in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr
    assert printed_losses(runs[0].stdout, 'epoch 1') == printed_losses(runs[1].stdout, 'epoch 1')
    assert len(os.listdir(data_loader.cache_folder())) == 1


def test_oneclass_runs_on_class_folders_by_name(tmp_path, capsys):
    images, labels = colour_images(300, seed=0)
    keep = labels < 3
    root = write_image_folder(str(tmp_path / 'images'), images[keep], labels[keep], ['ant', 'bee', 'cat'])
    out_dir = tmp_path / 'oneclass'
    run_cli(lambda: oneclass.main(['--dataset', 'folder', '--data_dir', root, '--classes', 'bee', '--out_dir',
                                   str(out_dir), '--gpu_id', '-1', '--arch', 'mlp', '--hidden_sizes', '32',
                                   '--btl_size', '4', '--n_epochs', '3']), 'oneclass.py')
    out = capsys.readouterr().out
    assert '1 bee' in out and os.path.exists(out_dir / 'class_1.pth')
    expect_usage_error(oneclass.main, 'oneclass.py', ['--dataset', 'folder', '--data_dir', root, '--classes', 'eel',
                                                      '--out_dir', str(out_dir)], capsys, '--classes eel: not a class')


def test_a_small_folder_gets_batches_and_epochs_enough_to_learn_and_an_explicit_short_run_is_warned(tmp_path,
                                                                                                    capsys):
    root = str(tmp_path / 'images')
    write_image_folder(root, *colour_images(60, seed=0))
    argv = ['--model_fn', str(tmp_path / 'm.pth'), '--dataset', 'folder', '--data_dir', root, '--hidden_sizes', '16',
            '--btl_size', '2', '--gpu_id', '-1', '--min_steps', '600']
    saved = train_in_process(*argv)
    n_train = int(len(load_dataset('folder', root, True)[0]) * .8)  # the training share of the split
    assert saved['config'].training.batch_size == max(config.MIN_FITTED_BATCH, n_train // config.MIN_BATCHES_PER_EPOCH)
    steps = config.steps_per_epoch(n_train, saved['config'].training.batch_size)
    assert saved['config'].training.n_epochs == max(20, -(-600 // steps)) == len(saved['history']) > 20
    capsys.readouterr()
    run_cli(lambda: train.main([*argv[:-2], '--n_epochs', '2', '--overwrite']), 'train.py')
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 1 and 'optimizer steps, fewer than the 2000 (--min_steps)' in warnings[0]
    assert f'give --n_epochs {-(-2000 // steps)}' in warnings[0]


@pytest.mark.slow
def test_the_readme_command_on_a_small_folder_beats_pca_of_as_many_components(tmp_path, capsys):
    """The README's own-images command, no tuning flag, on 300 colour 28 x 28 images of 10 classes: the
    length fitted to 192 training images (batches of 16, 2,004 steps) gives codes that reconstruct better
    than PCA-2's and keep the classes apart at least as well, and predict.py warns of nothing (here: squared
    error 6.1 against 84.3 per test image, 5-NN accuracy 1.0 against 0.92)."""
    root = write_image_folder(str(tmp_path / 'my_images'), *colour_images(300, seed=0))
    model_fn, out_dir = str(tmp_path / 'mine.pth'), str(tmp_path / 'mine_predict')
    run_cli(lambda: train.main(['--model_fn', model_fn, '--dataset', 'folder', '--data_dir', root, '--btl_size', '2',
                                '--arch', 'conv', '--gpu_id', '-1', '--verbose', '0']), 'train.py')
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--what', 'metrics', '--gpu_id', '-1', '--out_dir',
                                  out_dir]), 'predict.py')
    with open(os.path.join(out_dir, 'metrics.json')) as f:
        m = json.load(f)
    assert 'warning' not in capsys.readouterr().err
    assert m['sse_per_image'] < m['pca_sse_per_image'] and m['knn_accuracy'] >= m['pca_knn_accuracy']


def test_identical_training_images_are_refused_before_anything_is_written(tmp_path, capsys):
    root = str(tmp_path / 'images')
    write_image_folder(root, torch.zeros(10, 1, 8, 8, dtype=torch.uint8))
    expect_usage_error(train.main, 'train.py', ['--model_fn', str(tmp_path / 'm.pth'), '--dataset', 'folder',
                                                '--data_dir', root, *TINY], capsys, 'training images are identical')
    assert not os.path.exists(tmp_path / 'm.pth')


@pytest.mark.parametrize('layout', ['held_out', 'train_test'])
def test_the_codes_file_names_each_test_image_with_its_file_label_code_and_reconstruction(layout, tmp_path):
    images, labels = colour_images(60, seed=0)
    names = [f'kind {c}' for c in range(10)]
    if layout == 'held_out':
        root = write_image_folder(str(tmp_path / 'images'), images, labels, names)
    else:
        root = str(tmp_path / 'images')
        write_image_folder(os.path.join(root, 'train'), images[:40], labels[:40], names)
        write_image_folder(os.path.join(root, 'test'), images[40:], labels[40:], names)
    model_fn = str(tmp_path / 'm.pth')
    train_in_process('--model_fn', model_fn, '--dataset', 'folder', '--data_dir', root, '--btl_size', '3',
                     '--target_labels', 'kind 1', 'kind 2', 'kind 3', *TINY)
    run_cli(lambda: predict.main(['--model_fn', model_fn, '--gpu_id', '-1', '--what', 'codes', '--train_codes']),
            'predict.py')
    saved = np.load(tmp_path / 'm_predict' / 'codes.npz')
    test_images, test_labels = load_folder(root, False)
    assert set(saved['labels'].tolist()) <= {1, 2, 3} and len(saved['codes']) == len(saved['labels'])
    assert saved['codes'].shape[1] == 3 and saved['train_codes'].shape[1] == 3
    for i, path in zip(saved['index'].tolist(), saved['files']):
        # each code's file is the test image at its index, of its class
        assert torch.equal(data_loader.decode_images([str(path)]), test_images[i:i + 1])
        assert names[test_labels[i]] == os.path.basename(os.path.dirname(str(path)))
    assert saved['reconstructions'].shape == (len(saved['codes']), 3, 28, 28)
    assert list(saved['class_names']) == names
