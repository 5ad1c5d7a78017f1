"""The app's "Calibrate prediction sets" step: labelled cases of the user's own, added batch by batch (one class per
batch), and a coverage; it calls :meth:`SynthesizedClassifier.calibrate_conformal`, after which the result cards
show each image's prediction set with its coverage guarantee (see :mod:`sgps_hf.trust.conformal`).

The cases are kept as the uploaded files' paths (in Gradio's upload cache) with their class, and read again,
with the app's checks, when the user calibrates.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from ..hub.model_card import md_code, md_escape
from ..imaging import image_fingerprint
from ..trust.advice import label_conflicts
from ..trust.conformal import min_cases
from ..trust.own_cases import support_fingerprints
from .inputs import as_list, display_name, read_upload, read_with_warnings, upload_path
from .limits import ACCEPTED_FORMATS, DEFAULT_LIMITS, AppInputError, AppLimits

#: The most labelled cases one session may add (each is read again when calibrating, on a shared 2-core server).
MAX_CALIBRATION_CASES = 200
MIN_COVERAGE, MAX_COVERAGE = 0.5, 0.99

Cases = list[tuple[str, str]]  # (uploaded file path, class name)


def add_cases(
    classifier: Any,
    cases: Cases | None,
    class_name: Any,
    files: Any,
    limits: AppLimits = DEFAULT_LIMITS,
    roots: Sequence[Path] = (),
) -> Cases:
    """``cases`` plus the uploaded ``files``, all of class ``class_name`` (each file checked as an upload)."""
    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first (step 2).")
    if not isinstance(class_name, str) or class_name not in classifier.label_names:
        raise AppInputError(f"Pick the class these labelled cases belong to (one of {classifier.label_names}).")
    items = as_list(files)
    if not items:
        raise AppInputError(f"Upload at least one labelled case ({ACCEPTED_FORMATS}) of class {class_name!r}.")
    cases = list(cases or [])
    if len(cases) + len(items) > MAX_CALIBRATION_CASES:
        raise AppInputError(
            f"{len(cases) + len(items)} labelled cases: the app takes at most {MAX_CALIBRATION_CASES}; "
            "calibrate larger sets with `sgps calibrate`."
        )
    known = {path for path, _ in cases}
    for item in items:
        read_upload(item, limits, roots)  # a bad file is refused now, named, not at calibration time
        path = str(upload_path(item))
        if path in known:  # Gradio keeps one cached file per content: the same case uploaded again
            raise AppInputError(
                f"{display_name(Path(path))}: already among the labelled cases; each case counts once."
            )
        known.add(path)
    return cases + [(str(upload_path(item)), class_name) for item in items]


def cases_markdown(cases: Cases | None, coverage: float = 0.9) -> str:
    """How many labelled cases per class, and how many a guarantee at ``coverage`` needs."""
    if not cases:
        return "No labelled cases yet."
    counts = Counter(label for _, label in cases)
    per_class = ", ".join(f"{md_code(label)} {n}" for label, n in counts.items())
    return (
        f"{len(cases)} labelled case(s): {per_class}. A {coverage:.0%} coverage guarantee needs at least "
        f"{min_cases(coverage)}."
    )


def check_coverage(coverage: Any) -> float:
    try:
        value = float(coverage)
    except (TypeError, ValueError):
        raise AppInputError(f"Coverage {coverage!r} is not a number; pick a value such as 0.9.") from None
    if not MIN_COVERAGE <= value <= MAX_COVERAGE:  # also rejects NaN
        raise AppInputError(f"Coverage {value} is outside {MIN_COVERAGE}-{MAX_COVERAGE}; pick a value such as 0.9.")
    return value


def calibrate_from_app(
    classifier: Any,
    cases: Cases | None,
    coverage: Any,
    limits: AppLimits = DEFAULT_LIMITS,
    roots: Sequence[Path] = (),
) -> tuple[Any, str]:
    """Calibrate ``classifier`` (in place) on the labelled ``cases``; returns it and a Markdown summary."""
    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first (step 2).")
    value = check_coverage(coverage)
    if not cases:
        raise AppInputError("Add labelled cases first: pick their class, upload them and press 'Add labelled cases'.")
    data: dict[str, list[bytes]] = {}
    messages: list[str] = []
    for path, label in cases:
        content, _, advice = read_with_warnings(path, limits, roots)
        data.setdefault(label, []).append(content)
        messages += advice
    by_label = [[image_fingerprint(content) for content in contents] for contents in data.values()]
    support = support_fingerprints(classifier)
    overlap = sum(digest in support for digests in by_label for digest in digests)
    if overlap:  # (calibrate_conformal warns too, but process-wide warnings are not per user on a server)
        messages.append(
            f"{overlap} of the {len(cases)} labelled cases are support images of this classifier: the guarantee "
            "is optimistic; leave them out and calibrate again."
        )
    messages += [
        f"{message} One of them is a wrong label in the calibration."
        for message in label_conflicts(list(data), by_label, what="labelled cases")
    ]
    calibration = classifier.calibrate_conformal(data, coverage=value)
    messages = list(dict.fromkeys(messages))
    summary = (
        f"Calibrated on {calibration['num_cases']} labelled case(s): from now on each result shows a prediction set "
        f"that holds the true class with probability at least {calibration['coverage']:.0%} (for cases like these; "
        "classify again to see them). Re-synthesizing drops the calibration: calibrate again afterwards."
    )
    return classifier, summary + "".join(f"\n\n**Warning:** {md_escape(m)}" for m in messages)


# --------------------------------------------------------------------------------------------------
# Layout and events (called from :mod:`.classification`)


def calibration_layout(gr: Any) -> dict[str, Any]:
    """The step's components, inside the caller's layout."""
    w: dict[str, Any] = {}
    with gr.Accordion("Calibrate prediction sets (a coverage guarantee from labelled cases of your own)", open=False):
        gr.Markdown(
            "Upload labelled cases the classifier was **not** synthesized from, one class per batch: pick the "
            "class, upload its cases, press *Add labelled cases*; repeat for each class. Then pick the coverage."
        )
        with gr.Row():
            w["cal_class"] = gr.Dropdown([], label="Class of these labelled cases", elem_id="cal-class")
            w["cal_files"] = gr.File(label="Labelled cases", file_count="multiple", elem_id="cal-images")
        with gr.Row():
            w["cal_add"] = gr.Button("Add labelled cases", elem_id="cal-add")
            w["cal_reset"] = gr.Button("Remove all labelled cases", elem_id="cal-reset")
        w["cal_cases"] = gr.State([])
        w["cal_list"] = gr.Markdown("No labelled cases yet.", elem_id="cal-list")
        w["cal_coverage"] = gr.Slider(
            MIN_COVERAGE, MAX_COVERAGE, value=0.9, step=0.01, label="Coverage", elem_id="cal-coverage"
        )
        w["cal_run"] = gr.Button("Calibrate prediction sets", variant="primary", elem_id="cal-run")
        w["cal_status"] = gr.Markdown(elem_id="cal-status", min_height=48)
    return w


def wire_calibration(gr: Any, ui: Any, ctx: Any, shown: Callable) -> None:
    """The step's events: add cases, reset them, calibrate (the card is rendered again with the calibration)."""
    from ..hub.model_card import classifier_card

    @shown
    def add(classifier: Any, cases: Cases, class_name: str, files: Any, coverage: float):
        cases = add_cases(classifier, cases, class_name, files, ctx.limits, ctx.roots)
        return cases, cases_markdown(cases, check_coverage(coverage)), gr.update(value=None)

    ui.cal_add.click(
        add,
        [ui.classifier, ui.cal_cases, ui.cal_class, ui.cal_files, ui.cal_coverage],
        [ui.cal_cases, ui.cal_list, ui.cal_files],
        api_name="calibration_cases",
    )
    ui.cal_reset.click(lambda: ([], cases_markdown([])), None, [ui.cal_cases, ui.cal_list], api_visibility="private")

    @shown
    def calibrate(classifier: Any, cases: Cases, coverage: float):
        calibrated, summary = ctx.runner.run(
            "Calibration", calibrate_from_app, classifier, cases, coverage, ctx.limits, ctx.roots
        )
        return calibrated, summary, classifier_card(calibrated).text

    ui.cal_run.click(lambda: "", None, ui.cal_status, api_visibility="private", queue=False).then(
        calibrate,
        [ui.classifier, ui.cal_cases, ui.cal_coverage],
        [ui.classifier, ui.cal_status, ui.card],
        api_name="calibrate",
    )
