"""The figures' helpers: labelled grids (guidance sweep, trajectory) and a loss curve that reads with few points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genladder.plotting import FEW_POINTS, grid_image, labelled_grid_image, loss_curve_figure, save_loss_curve


class TestLabelledGrid:
    def test_labels_sit_on_a_margin_around_the_unchanged_grid(self):
        images = torch.rand(2 * 3, 1, 32, 32)
        bare = np.asarray(grid_image(images, nrow=3))
        labelled = np.asarray(labelled_grid_image(images, 3, row_labels=["w=0", "w=0.5"],
                                                  column_labels=["t=9", "t=0", "x0"]))
        top, left = labelled.shape[0] - bare.shape[0], labelled.shape[1] - bare.shape[1]
        assert top > 0 and left > 0
        assert np.array_equal(labelled[top:, left:], bare)  # the cells keep their exact pixels
        assert labelled[:top, left:].min() < 128 and labelled[top:, :left].min() < 128  # text drawn on the margins

    def test_columns_only_and_colour(self):
        images = torch.rand(4, 3, 16, 16)
        labelled = labelled_grid_image(images, 4, column_labels=["a", "b", "c", "d"])
        bare = grid_image(images, 4)
        assert labelled.mode == "RGB" and labelled.width == bare.width and labelled.height > bare.height

    def test_a_label_per_row_and_column(self):
        with pytest.raises(ValueError, match="1 row labels for 2 rows"):
            labelled_grid_image(torch.rand(4, 1, 8, 8), 2, row_labels=["only one"])
        with pytest.raises(ValueError, match="3 column labels for 2 columns"):
            labelled_grid_image(torch.rand(4, 1, 8, 8), 2, column_labels=["a", "b", "c"])


def _records(train: int, test: int) -> list[dict]:
    return ([{"split": "train", "images_seen": 128 * (i + 1), "loss": 0.5 / (i + 1)} for i in range(train)]
            + [{"split": "test", "images_seen": 128 * train, "loss": 0.3 + 0.01 * i} for i in range(test)])


class TestLossCurve:
    def test_one_point_shows_as_a_marker(self):
        import matplotlib.pyplot as plt

        figure = loss_curve_figure(_records(1, 0))
        (axes,) = figure.axes
        (line,) = axes.lines
        assert line.get_marker() not in (None, "None", "")  # a lone point on a plain line draws nothing
        low, high = axes.get_xlim()
        assert low == 0 and high > 128  # the axis starts where training started
        plt.close(figure)

    def test_many_points_are_a_plain_line_on_a_log_axis_when_the_loss_falls_tenfold(self):
        import matplotlib.pyplot as plt

        figure = loss_curve_figure(_records(FEW_POINTS + 5, 2))
        (axes,) = figure.axes
        train, test = axes.lines
        assert train.get_marker() in (None, "None", "") and test.get_marker() == "o"
        assert axes.get_yscale() == "log"
        plt.close(figure)
        figure = loss_curve_figure(_records(3, 1))  # from 0.5 to 0.17: a log axis would have no labelled tick
        assert figure.axes[0].get_yscale() == "linear"
        plt.close(figure)

    def test_no_records_still_writes_a_figure(self, tmp_path):
        assert save_loss_curve([], tmp_path / "loss.png").stat().st_size > 0
