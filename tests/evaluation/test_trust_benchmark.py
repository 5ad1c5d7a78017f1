"""The trust benchmark leaves a classifier's support images out of its test cases by content, not by path."""

from __future__ import annotations

import shutil
import warnings

import pytest
from sgps_testing import SHARED_DATA, noise_image, skip_without_real_data, synthetic_task, tiny_synthesizer

from sgps_hf import SGPSProcessor
from sgps_hf.errors import AccuracyWarning
from sgps_hf.evaluation.trust_benchmark import not_support, subgroup_audit_task

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_a_byte_copy_of_a_support_image_is_support(tmp_path):
    synth = tiny_synthesizer()
    spec = synthetic_task(tmp_path / "task", images_per_class=(1, 1, 1))
    classifier = synth.synthesize(spec, processor=SGPSProcessor.from_sgps_config(synth.config))
    support = spec.classes[0].images[0]
    twin = shutil.copy(support, tmp_path / "elsewhere.png")
    other = tmp_path / "other.png"
    noise_image(seed=99).save(other)
    independent = not_support(classifier)
    assert [independent(p) for p in (support, twin, spec.classes[2].images[0], other)] == [False, False, False, True]


@pytest.mark.integration
@skip_without_real_data()
def test_the_subgroup_audit_leaves_out_a_support_images_twin_in_another_class():
    """Seed 0 draws basal_cell_carcinoma/0020.jpg as support; squamous_cell_carcinoma/0031.jpg is the same file."""
    synth = tiny_synthesizer()
    processor = SGPSProcessor.from_sgps_config(synth.config)
    # The other twin pair (basal_cell_carcinoma/0078 = squamous_cell_carcinoma/0023) stays among the test cases: the
    # evaluation names it; a support image's twin left in would be an error here.
    with (
        warnings.catch_warnings(),
        pytest.warns(AccuracyWarning, match="labelled cases of more than one class.*'basal_cell_carcinoma' and"),
    ):
        warnings.filterwarnings("error", message=".*support images of this classifier", category=AccuracyWarning)
        audit = subgroup_audit_task(synth, processor, shots=5, seed=0, data_dir=str(SHARED_DATA))
    assert audit["scores"]["num_images"] == 800 - 6 * 5 - 1 and audit["scores"]["support_cases"] == []
