"""Names and cards (issue 16): invisible, bidirectional-control and look-alike names are refused or NFKC-normalised
with a message; Markdown and HTML in names and texts are escaped in model cards and in the app."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt
from sgps_testing import noise_image, tiny_synthesizer

from sgps_hf import ClassSpec, InvalidTaskError, TaskSpec
from sgps_hf.hub.model_card import classifier_card, md_code, md_escape, md_safe_markdown

pytestmark = pytest.mark.usefixtures("torch_single_thread")

HOSTILE = [
    "<script>alert(1)</script>",
    "x`y",
    "``",
    "a|b",
    "[link](http://evil.example)",
    "![img](http://evil.example/x.png)",
    "**bold** _it_ ~~s~~",
    "<img src=x onerror=alert(1)>",
    "&lt;b&gt;",
    "` <b>tag</b> `",
]


def render(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").enable("strikethrough").render(markdown)


def text_of(html: str) -> str:
    import html as html_module
    import re

    return html_module.unescape(re.sub(r"<[^>]+>", "", html))


@pytest.mark.parametrize("name", ["a\u200b", "\u200ba", "a\u2060b", "a\ufe0f", "a\u00adb", "\u3164a"])
def test_invisible_characters_in_names_are_refused(name):
    with pytest.raises(InvalidTaskError, match="invisible characters"):
        ClassSpec(name, "text")


@pytest.mark.parametrize("where", ["name", "description"])
def test_bidi_controls_are_refused(where):
    spoof = "benign\u202egnp.exe"
    with pytest.raises(InvalidTaskError, match="bidirectional-control"):
        ClassSpec(spoof, "text") if where == "name" else ClassSpec("a", spoof)
    with pytest.raises(InvalidTaskError, match="bidirectional-control"):
        TaskSpec([ClassSpec("a", "x"), ClassSpec("b", "y")], name="task\u2066x")


def test_full_width_names_are_normalised_with_a_message():
    with pytest.warns(UserWarning, match="normalised to 'melanoma'"):
        spec = ClassSpec("\uff4d\uff45\uff4c\uff41\uff4e\uff4f\uff4d\uff41", "text")
    assert spec.name == "melanoma"
    with pytest.warns(UserWarning):
        with pytest.raises(InvalidTaskError, match="Duplicate class name"):
            TaskSpec([ClassSpec("melanoma", "x"), ClassSpec("\uff2d\uff45\uff4c\uff41\uff4e\uff4f\uff4d\uff41", "y")])


@pytest.mark.parametrize(
    "latin, other", [("a", "\u0430"), ("nevus", "n\u0435vus"), ("Scar", "S\u0441ar"), ("PO", "\u03a1\u039f")]
)
def test_look_alike_names_are_refused_as_duplicates(latin, other):
    with pytest.raises(InvalidTaskError, match="look-alike letters"):
        TaskSpec([ClassSpec(latin, "x"), ClassSpec(other, "y")])


def test_legitimate_names_still_work():
    task = TaskSpec(
        [ClassSpec("\u03b1-thalassemia", "x"), ClassSpec("\u0440\u0430\u043a", "y"), ClassSpec("rash \U0001fa7a", "z")]
    )
    assert task.class_names == ["\u03b1-thalassemia", "\u0440\u0430\u043a", "rash \U0001fa7a"]


@pytest.mark.parametrize("text", HOSTILE)
def test_escaping_helpers_keep_the_text_literal(text):
    for markdown in (md_escape(text), md_code(text), md_safe_markdown(md_code(text)), md_safe_markdown(text)):
        html = render(markdown)
        assert (
            "<script" not in html
            and "<img" not in html
            and "<a " not in html
            and "<strong" not in html
            and "<em" not in html
        )
    assert text_of(render(md_escape(text))).strip() == " ".join(text.split())
    assert text_of(render(md_code(text))).strip() == " ".join(text.split()).strip()


def test_the_card_escapes_every_user_string():
    synth = tiny_synthesizer(seed=0)
    classes = [ClassSpec(name, f"desc {name}", [noise_image(i)]) for i, name in enumerate(HOSTILE[:6])]
    task = TaskSpec(classes, name="<img src=x onerror=alert(1)> # [x](y)", modality="**x-ray** <b>")
    classifier = synth.synthesize(task)
    classifier.info["synthesizer"]["name_or_path"] = "/models/`evil`<script>"
    classifier.info["history"] = [
        {"version": 2, "created": "<b>now</b>", "summary": "Added 1 to `a` <script>x</script> [l](u)"}
    ]
    text = classifier_card(classifier).text
    html = render(text)  # the body (card.text has no front matter)
    for bad in ("<script", "<img", "<b>", '<a href="y"', '<a href="u"', '<a href="http://evil'):
        assert bad not in html, bad
    heading = html.split("</h1>")[0]
    assert "&lt;img src=x onerror=alert(1)&gt; # [x](y)" in heading
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == 6
    cells = html.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    for cell_row, name in zip(cells, HOSTILE[:6], strict=False):  # every name is one literal cell, whatever it holds
        assert cell_row.count("<td>") == 4
        assert text_of(cell_row.split("</td>")[1]).strip() == name


def test_update_summaries_put_names_in_safe_code_spans(tmp_path):
    synth = tiny_synthesizer(seed=0)
    classifier = synth.synthesize(
        TaskSpec([ClassSpec("x`<b>y</b>", "a", [noise_image(1)]), ClassSpec("b", "c", [noise_image(2)])])
    )
    updated = synth.update(classifier, {"x`<b>y</b>": [noise_image(3)]})
    summary = updated.info["history"][-1]["summary"]
    html = render(summary)
    assert "<b>" not in html and "x`&lt;b&gt;y&lt;/b&gt;" in html
