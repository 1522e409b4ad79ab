"""Image-domain peer defences on tiny literal arrays with known outputs."""
import numpy as np
import pytest

from defense.core import ToolkitError
from defense.evaluate.peers import BitDepthReduction, JpegCompression, MedianSmoothing, make_peer


def test_median_3x3_reflect_known_output():
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32)
    batch = np.stack([x, np.full((3, 3), 10.0, np.float32)])[None]  # (1, 2, 3, 3): 2nd channel constant
    out = MedianSmoothing(3)(batch)
    np.testing.assert_array_equal(out[0, 0], [[2, 3, 3], [4, 5, 6], [7, 7, 8]])
    np.testing.assert_array_equal(out[0, 1], np.full((3, 3), 10.0))
    assert out.dtype == np.float32 and out.shape == batch.shape


def test_median_removes_isolated_spike_and_keeps_images_apart():
    x = np.zeros((2, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 255.0
    x[1] = 7.0
    out = MedianSmoothing(3)(x)
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[1], 7.0)


@pytest.mark.parametrize("bits,values,expected", [
    (1, [0, 100, 128, 200, 300, -5], [0, 0, 255, 255, 255, 0]),
    (2, [0, 42, 43, 128, 255, 256], [0, 0, 85, 170, 255, 255]),
    (8, [0, 17, 254, 255], [0, 17, 254, 255]),
])
def test_bit_depth_known_output(bits, values, expected):
    x = np.asarray(values, np.float32).reshape(1, 1, 1, -1)
    np.testing.assert_allclose(BitDepthReduction(bits)(x).ravel(), expected, atol=1e-4)


def test_jpeg_flat_grey_is_exact():
    x = np.full((2, 1, 8, 8), 100.0, np.float32)
    x[1] = 128.0
    np.testing.assert_array_equal(JpegCompression(75)(x), x)


def test_jpeg_keeps_bgr_order_and_changes_texture():
    x = np.zeros((1, 3, 16, 16), np.float32)
    x[0, 0] = 255.0  # pure blue in BGR
    out = JpegCompression(75)(x)
    assert out[0, 0].mean() > 240 and out[0, 1:].max() < 15  # blue stays in channel 0
    checker = (np.indices((16, 16)).sum(axis=0) % 2 * 255.0).astype(np.float32)[None, None]
    smoothed = JpegCompression(10)(checker)
    assert np.abs(smoothed - checker).mean() > 10 and smoothed.min() >= 0 and smoothed.max() <= 255


def test_describe_and_make_peer():
    assert make_peer("median").describe() == "median(3)"
    assert make_peer("jpeg:50").describe() == "jpeg(50)"
    assert make_peer("bits:3").describe() == "bits(3)"


def test_make_peer_unknown():
    with pytest.raises(ToolkitError, match="unknown peer defence .blur.; known: median, jpeg, bits, pd$"):
        make_peer("blur")


def test_median_bad_window():
    with pytest.raises(ValueError, match="window_size must be a positive integer, got 0"):
        MedianSmoothing(0)


def test_jpeg_bad_quality():
    with pytest.raises(ValueError, match=r"quality must be an integer in \[1, 95\], got 100"):
        JpegCompression(100)


def test_bits_bad_value():
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 8\], got 9"):
        BitDepthReduction(9)


def test_preprocessor_needs_4d():
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\), got \(3, 3\)"):
        MedianSmoothing(3)(np.zeros((3, 3)))


def test_jpeg_needs_1_or_3_channels():
    with pytest.raises(ValueError, match="JPEG needs 1 or 3 channels, got 2"):
        JpegCompression(75)(np.zeros((1, 2, 8, 8)))
