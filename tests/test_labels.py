"""Label files: real Label Studio exports, accepted normalizations, refusals, round trips."""

from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from alft_cli.errors import LabelFileError, OptionError
from alft_cli.labels import (
    LabelRow,
    QueryRow,
    atomic_write_text,
    label_studio_config,
    match_keys,
    read_label_file,
    write_label_studio_tasks,
    write_labels_csv,
    write_query_csv,
)
from alft_cli.labels import labelstudio as lb

LS_DIR = Path(__file__).parent / "data" / "label_studio"
CLASSES = ["airplane", "bare-soil", "buildings", "cars", "water"]


def vec(*names: str) -> tuple[int, ...]:
    return tuple(int(c in names) for c in CLASSES)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def refused(path: Path, classes=CLASSES, fmt: str = "auto") -> LabelFileError:
    with pytest.raises(LabelFileError) as info:
        read_label_file(path, classes, fmt)
    return info.value


# --------------------------------------------------------------------------------------
# Real Label Studio 1.23.2 exports (tests/data/label_studio/README.md has the intended
# answer for every task)
# --------------------------------------------------------------------------------------

# Intended labels per task, from the README. Tasks 6 (unannotated) and 7 (skipped) are not
# labels; task 5 has two annotations and the newer one (water, bare-soil) wins.
INTENDED = {
    "task 1": ("images/airplane/airplane00.jpg", vec("airplane", "cars")),
    "task 2": ("images/bare-soil/bare-soil00.jpg", vec()),
    "task 3": ("images/buildings/buildings00.jpg", vec("buildings", "water")),
    "task 4": ("images/cars/cars00.jpg", vec("cars")),
    "task 5": ("images/water/water00.jpg", vec("water", "bare-soil")),
}
EXPECTED_ROWS = [LabelRow(ref, labels, where) for where, (ref, labels) in INTENDED.items()]

# skipped = tasks present in the file without a submitted annotation: JSON exports hold
# task 6 (none) and 7 (skipped); the UI's export leaves out task 6; JSON_MIN and CSV leave
# out skipped annotations and with them task 7.
EXPORTS = {
    "export.json": 2,
    "export_snapshot.json": 2,
    "export_ui_default.json": 1,
    "export_min.json": 1,
    "export.csv": 1,
}


def test_every_fixture_file_is_covered():
    files = {p.name for p in LS_DIR.iterdir()} - {"README.md"}
    assert files == set(EXPORTS) | {"import_tasks.json"}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_label_studio_exports_give_the_intended_answer(name):
    parsed = read_label_file(LS_DIR / name, CLASSES)
    assert parsed.format == "label-studio"
    assert parsed.rows == EXPECTED_ROWS
    assert parsed.skipped == EXPORTS[name]
    # Task 5 was settled by the documented rule, and the user is told so.
    (note,) = parsed.notes
    assert "1 task had several submitted annotations (task 5)" in note
    assert "most recently updated" in note
    assert "disagreed" in note


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_label_studio_exports_with_explicit_format(name):
    assert read_label_file(LS_DIR / name, CLASSES, "label-studio").rows == EXPECTED_ROWS


def test_ui_default_export_has_no_task_6():
    doc = json.loads((LS_DIR / "export_ui_default.json").read_text())
    assert 6 not in {t["id"] for t in doc}
    parsed = read_label_file(LS_DIR / "export_ui_default.json", CLASSES)
    assert "task 6" not in {r.where for r in parsed.rows}


def test_import_task_file_is_refused_as_not_an_export():
    # The import payload carries only predictions, and predictions are never labels.
    err = refused(LS_DIR / "import_tasks.json")
    assert "import_tasks.json" in err.message
    assert err.details == [
        "import_tasks.json: holds tasks without annotations: it is a Label Studio task file "
        "for import (like the one 'alft query' writes), not an export; label the tasks, then "
        "export the project from Label Studio"
    ]


def test_fixture_image_references_match_archive_keys():
    keys = {f"{c}/{c}0{i}.jpg" for c in CLASSES for i in range(2)}
    parsed = read_label_file(LS_DIR / "export.json", CLASSES)
    mapping, problems = match_keys([r.ref for r in parsed.rows], keys)
    assert problems == []
    assert mapping["images/airplane/airplane00.jpg"] == "airplane/airplane00.jpg"
    assert sorted(mapping.values()) == sorted(
        [
            "airplane/airplane00.jpg",
            "bare-soil/bare-soil00.jpg",
            "buildings/buildings00.jpg",
            "cars/cars00.jpg",
            "water/water00.jpg",
        ]
    )


# --------------------------------------------------------------------------------------
# Label Studio semantics on hand-made exports
# --------------------------------------------------------------------------------------


def choice(choices, from_name="labels"):
    return {
        "from_name": from_name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": choices},
    }


def ann(aid, result, updated="2026-01-01T00:00:00Z", cancelled=False):
    return {"id": aid, "result": result, "was_cancelled": cancelled, "updated_at": updated}


def task(tid, annotations, image=None, **extra):
    data = {"image": image or f"img/{tid}.jpg"}
    return {"id": tid, "data": data, "annotations": annotations, **extra}


def read_tasks(tmp_path, tasks, classes=CLASSES):
    return read_label_file(write(tmp_path, "ls.json", json.dumps(tasks)), classes)


def test_newest_submitted_annotation_wins_and_ties_go_to_the_higher_id(tmp_path):
    parsed = read_tasks(
        tmp_path,
        [
            # The older annotation has the higher id: time decides, not id.
            task(
                1,
                [
                    ann(9, [choice(["water"])], "2026-01-01T00:00:00Z"),
                    ann(3, [choice(["cars"])], "2026-01-02T00:00:00.5Z"),
                ],
            ),
            # Same time: the higher id wins.
            task(2, [ann(8, [choice(["cars"])]), ann(4, [choice(["water"])])]),
            # A newer skip does not replace a submitted annotation.
            task(
                3,
                [
                    ann(5, [choice(["airplane"])]),
                    ann(6, [], "2027-01-01T00:00:00Z", cancelled=True),
                ],
            ),
        ],
    )
    assert [r.labels for r in parsed.rows] == [vec("cars"), vec("cars"), vec("airplane")]
    assert parsed.notes == [
        "2 tasks had several submitted annotations (task 1, task 2); the most recently "
        "updated one was used; in 2 of them the annotations disagreed"
    ]


def test_timestamps_with_offsets_and_short_fractions_compare_as_times():
    assert lb._timestamp("2026-01-01T01:00:00+01:00") == lb._timestamp("2026-01-01T00:00:00Z")
    assert lb._timestamp("2026-01-01T00:00:00.5Z") > lb._timestamp("2026-01-01T00:00:00.49Z")
    assert lb._timestamp("garbage") == lb._OLDEST


def test_drafts_predictions_and_skips_are_not_labels(tmp_path):
    draft = {"id": 1, "result": [choice(["water"])]}
    prediction = {"model_version": "m", "result": [choice(["cars"])]}
    parsed = read_tasks(
        tmp_path,
        [
            task(1, [], drafts=[draft]),
            task(2, [], predictions=[prediction]),
            task(3, [ann(1, [], cancelled=True)]),
            task(4, [ann(2, [])]),
        ],
    )
    assert parsed.rows == [LabelRow("img/4.jpg", vec(), "task 4")]
    assert parsed.skipped == 3
    assert any("only a draft" in n for n in parsed.notes)


def test_other_result_types_are_ignored_and_several_choice_fields_resolve(tmp_path):
    comment = {
        "from_name": "note",
        "to_name": "image",
        "type": "textarea",
        "value": {"text": ["cloudy"]},
    }
    parsed = read_tasks(
        tmp_path,
        [
            task(1, [ann(1, [choice(["water"]), choice(["good"], "quality"), comment])]),
            task(2, [ann(2, [choice(["bad"], "quality")])]),
        ],
    )
    # "quality" holds no project class, so "labels" is the field; task 2 has no labels
    # result, which is a submitted "no class present".
    assert [r.labels for r in parsed.rows] == [vec("water"), vec()]


def test_alft_key_is_preferred_and_image_urls_are_decoded(tmp_path):
    tasks = [
        task(1, [ann(1, [])], image="/data/local-files/?d=arch%2Fa%20b.jpg"),
        task(2, [ann(2, [])], image="http://x/y.jpg"),
    ]
    tasks[1]["data"]["alft_key"] = "cars/cars00.jpg"
    parsed = read_tasks(tmp_path, tasks)
    assert [r.ref for r in parsed.rows] == ["/data/local-files/?d=arch/a b.jpg", "cars/cars00.jpg"]


def test_choice_names_match_case_insensitively(tmp_path):
    parsed = read_tasks(tmp_path, [task(1, [ann(1, [choice([" WATER", "Bare-Soil"])])])])
    assert parsed.rows[0].labels == vec("water", "bare-soil")


@pytest.mark.parametrize(
    ("tasks", "detail"),
    [
        ([{"id": 1, "annotations": []}], "ls.json task 1: has no 'data' object"),
        (
            [{"id": 1, "data": {"text": "x"}, "annotations": []}],
            "ls.json task 1: has no image reference ('data.image' or 'data.alft_key')",
        ),
        (
            [task(1, [ann(1, [{"type": "choices", "from_name": "labels", "value": {}}])])],
            "ls.json task 1: annotation 1 has a 'choices' result without value.choices",
        ),
        (
            [task(1, [{"id": 4, "was_cancelled": False}])],
            "ls.json task 1: annotation 4 has no 'result' list",
        ),
        (
            [task(1, [ann(1, [choice(["watr"])])])],
            "ls.json task 1: unknown class 'watr' in annotation 1 (did you mean 'water'?)",
        ),
        (
            [
                task(1, [ann(1, [choice(["water"])])], image="a.jpg"),
                task(2, [ann(2, [choice(["cars"])])], image="a.jpg"),
            ],
            "ls.json task 2: conflicting tasks for 'a.jpg': task 1 says water, task 2 says cars",
        ),
        (
            [task(1, [ann(1, [])], image="a.jpg"), task(2, [ann(2, [])], image="a.jpg")],
            "ls.json task 2: duplicate task for 'a.jpg' (same as task 1)",
        ),
        (
            [task(1, [ann(1, [choice(["water"], "a"), choice(["cars"], "b")])])],
            "ls.json: several Choices fields ('a', 'b') hold choices and alft cannot tell which "
            "one holds the project classes",
        ),
        (
            [task(1, [ann(1, [{"type": "rectanglelabels", "value": {}}])])],
            "ls.json: has no 'choices' results, only rectanglelabels: alft reads Label Studio "
            "projects labeled with a multi-choice Choices config",
        ),
        (
            [],
            "ls.json: holds no tasks (Label Studio's Export button leaves out tasks nobody "
            "annotated)",
        ),
        ({"id": 1}, "ls.json: is not a JSON list of tasks"),
        ([1, 2], "ls.json: is not a Label Studio export"),
    ],
)
def test_malformed_label_studio_json_is_refused(tmp_path, tasks, detail):
    err = refused(write(tmp_path, "ls.json", json.dumps(tasks)))
    assert any(d.startswith(detail) for d in err.details), err.details


def test_several_annotations_with_an_unknown_class_only_in_the_older_one(tmp_path):
    # Only the annotation that is used has to be valid.
    parsed = read_tasks(
        tmp_path,
        [
            task(
                1,
                [
                    ann(1, [choice(["watr"])], "2026-01-01T00:00Z"),
                    ann(2, [choice(["water"])], "2026-01-02T00:00Z"),
                ],
            )
        ],
    )
    assert parsed.rows[0].labels == vec("water")


def test_json_min_bare_string_missing_and_null_annotator(tmp_path):
    rows = [
        {"image": "a.jpg", "id": 1, "labels": "Water", "annotator": 1, "annotation_id": 1},
        {"image": "b.jpg", "id": 2, "annotator": "x@y.z", "annotation_id": 2},
        {
            "image": "c.jpg",
            "id": 3,
            "labels": {"choices": ["cars", "water"]},
            "annotator": 1,
            "annotation_id": 3,
        },
        {"image": "d.jpg", "id": 4, "annotator": None, "annotation_id": None},
    ]
    parsed = read_label_file(write(tmp_path, "min.json", json.dumps(rows)), CLASSES)
    assert [(r.ref, r.labels) for r in parsed.rows] == [
        ("a.jpg", vec("water")),
        ("b.jpg", vec()),
        ("c.jpg", vec("cars", "water")),
    ]
    assert parsed.skipped == 1


def test_json_min_with_another_field_name_finds_the_choices_column(tmp_path):
    rows = [
        {"image": "a.jpg", "id": 1, "tags": "water", "annotator": 1, "annotation_id": 1},
        {
            "image": "b.jpg",
            "id": 2,
            "tags": {"choices": ["cars", "water"]},
            "annotator": 1,
            "annotation_id": 2,
        },
    ]
    parsed = read_label_file(write(tmp_path, "min.json", json.dumps(rows)), CLASSES)
    assert [r.labels for r in parsed.rows] == [vec("water"), vec("cars", "water")]


def test_label_studio_csv_row_problems_name_task_and_row(tmp_path):
    text = (
        "annotation_id,annotator,id,image,labels\n"
        '1,1,1,a.jpg,"{""choices"":[""water"",""carz""]}"\n'
        "2,1,2,b.jpg,watr\n"
    )
    err = refused(write(tmp_path, "ls.csv", text))
    assert err.details == [
        "ls.csv task 1 (row 2): unknown class 'carz' in annotation 1 (did you mean 'cars'?)",
        "ls.csv task 2 (row 3): unknown class 'watr' in annotation 2 (did you mean 'water'?)",
    ]


def test_label_studio_csv_without_id_column_is_refused(tmp_path):
    err = refused(write(tmp_path, "ls.csv", "annotation_id,annotator,image,labels\n1,1,a.jpg,\n"))
    assert err.details == ["ls.csv row 1: no 'id' column (is this a Label Studio CSV export?)"]


# --------------------------------------------------------------------------------------
# CSV: accepted normalizations
# --------------------------------------------------------------------------------------

ONEHOT_ROWS = [("a/x.jpg", vec("water")), ("b/y.jpg", vec("airplane", "cars"))]


@pytest.mark.parametrize(
    ("content", "fmt"),
    [
        (
            "filename,airplane,bare-soil,buildings,cars,water\na/x.jpg,0,0,0,0,1\n"
            "b/y.jpg,1,0,0,1,0\n",
            "onehot",
        ),
        # Columns in any order.
        (
            "water,filename,cars,airplane,buildings,bare-soil\n1,a/x.jpg,0,0,0,0\n"
            "0,b/y.jpg,1,1,0,0\n",
            "onehot",
        ),
        # BOM + CRLF.
        (
            "\ufefffilename,airplane,bare-soil,buildings,cars,water\r\na/x.jpg,0,0,0,0,1\r\n"
            "b/y.jpg,1,0,0,1,0\r\n",
            "onehot",
        ),
        # ";" delimiter (European Excel), with Excel's sep= line.
        (
            "filename;airplane;bare-soil;buildings;cars;water\na/x.jpg;0;0;0;0;1\n"
            "b/y.jpg;1;0;0;1;0\n",
            "onehot",
        ),
        (
            "sep=;\nfilename;airplane;bare-soil;buildings;cars;water\na/x.jpg;0;0;0;0;1\n"
            "b/y.jpg;1;0;0;1;0\n",
            "onehot",
        ),
        # Tabs, quotes, whitespace, upper-case headers, backslashes, ./ and blank lines.
        (
            'FILENAME\tAirplane\tBARE-SOIL\tbuildings\tCars\tWater\n".\\a\\x.jpg"\t0\t0\t0\t0\t1\n'
            "\n b/y.jpg \t 1 \t0\t0\t1 \t0\n\n",
            "onehot",
        ),
        (
            '"filename", "airplane", "bare-soil", "buildings", "cars", "water"\n'
            '"./a/x.jpg", "0", "0", "0", "0", "1"\n"b/y.jpg","1","0","0","1","0"\n',
            "onehot",
        ),
        # Excel's trailing empty columns.
        (
            "filename,airplane,bare-soil,buildings,cars,water,,\na/x.jpg,0,0,0,0,1,,\n"
            "b/y.jpg,1,0,0,1,0,,\n",
            "onehot",
        ),
        # List CSV: ";" inside the cell, case and whitespace free, empty pieces dropped.
        ("filename,labels\na/x.jpg,water\nb/y.jpg,Airplane ; CARS;\n", "list"),
        ('Filename , Labels\r\n"a\\x.jpg"," water "\r\nb/y.jpg,"cars;airplane"\r\n', "list"),
        ('filename;labels\na/x.jpg;water\nb/y.jpg;"airplane;cars"\n', "list"),
    ],
)
def test_accepted_normalizations(tmp_path, content, fmt):
    parsed = read_label_file(write(tmp_path, "labels.csv", content), CLASSES)
    assert parsed.format == fmt
    assert [(r.ref, r.labels) for r in parsed.rows] == ONEHOT_ROWS
    assert parsed.skipped == 0


def test_rows_are_numbered_as_a_spreadsheet_shows_them(tmp_path):
    text = 'filename,labels\n\na.jpg,water\n"b\nc.jpg",cars\nd.jpg,None\ne.jpg,\n'
    parsed = read_label_file(write(tmp_path, "l.csv", text), CLASSES)
    assert [r.where for r in parsed.rows] == ["row 3", "row 4", "row 5"]
    assert parsed.rows[2].labels == vec()  # "none" = no class present
    assert parsed.unanswered == 1  # an empty cell is no answer: row 6 is not a label


def test_class_names_come_back_in_project_spelling_and_order(tmp_path):
    classes = ["Water", "bare soil", "Ünïcode"]
    parsed = read_label_file(
        write(tmp_path, "l.csv", "filename,labels\na.jpg,ünïcode;WATER;BARE SOIL\n"), classes
    )
    assert parsed.rows[0].labels == (1, 1, 1)


# --------------------------------------------------------------------------------------
# CSV: refusals (message names the file and the count; details name row and problem)
# --------------------------------------------------------------------------------------

HEADER = "filename,airplane,bare-soil,buildings,cars,water\n"


@pytest.mark.parametrize(
    ("content", "details"),
    [
        ("", ["labels.csv: is empty"]),
        ("\n  \n", ["labels.csv: is empty"]),
        (HEADER, ["labels.csv: has a header but no data rows"]),
        ("filename,labels\n\n", ["labels.csv: has a header but no data rows"]),
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            ["labels.csv: holds binary data, not CSV or JSON text"],
        ),
        (
            b"PK\x03\x04rest",
            ["labels.csv: is a ZIP file (an Excel workbook?), not text; save it as 'CSV UTF-8'"],
        ),
        (
            "filename,labels\nä.jpg,water\n".encode("utf-16"),
            ["labels.csv: is UTF-16 text; save it as UTF-8 ('CSV UTF-8' in Excel)"],
        ),
        (
            "filename,labels\nä.jpg,water\n".encode("latin-1"),
            [
                "labels.csv: is not UTF-8 text (byte 0xe4 at offset 16); save it as UTF-8 "
                "('CSV UTF-8' in Excel)"
            ],
        ),
        (
            "image,airplane,bare-soil,buildings,cars,water\na.jpg,0,0,0,0,1\n",
            [
                "labels.csv row 1: unknown column 'image': not a project class (project classes: "
                "airplane, bare-soil, buildings, cars, water)",
                "labels.csv row 1: no 'filename' column",
            ],
        ),
        (
            "filename,airplane,bare-soil,buildings,cars,watr\na.jpg,0,0,0,0,1\n",
            [
                "labels.csv row 1: unknown column 'watr': not a project class "
                "(did you mean 'water'?)",
                "labels.csv row 1: missing class column(s): 'water'",
            ],
        ),
        (
            "filename,airplane,cars,water\na.jpg,0,0,1\n",
            ["labels.csv row 1: missing class column(s): 'bare-soil', 'buildings'"],
        ),
        (
            "filename,airplane,bare-soil,buildings,cars,water,Water\na.jpg,0,0,0,0,1,1\n",
            ["labels.csv row 1: two columns for class 'water'"],
        ),
        (
            HEADER + "a.jpg,0,0,0,0,1\nb.jpg,0,2,0,0,yes\nc.jpg,0,0,,0,1\n",
            [
                "labels.csv row 3: value '2' for class 'bare-soil' is not 0 or 1",
                "labels.csv row 3: value 'yes' for class 'water' is not 0 or 1",
                "labels.csv row 4: no value for class 'buildings' (write 0 or 1)",
            ],
        ),
        (HEADER + "a.jpg,0,0,0,0,1\n ,0,0,0,0,1\n", ["labels.csv row 3: empty filename"]),
        (
            HEADER + "a.jpg,0,0,0,0\nb.jpg,0,0,0,0,1,1\n",
            [
                "labels.csv row 2: has 5 fields, but the header has 6",
                "labels.csv row 3: has 7 fields, but the header has 6",
            ],
        ),
        (
            HEADER + "a.jpg,0,0,0,0,1\nb.jpg,0,0,0,0,1\n./a.jpg,0,0,0,0,1\n",
            ["labels.csv row 4: duplicate row for 'a.jpg' (same as row 2)"],
        ),
        (
            HEADER + "a.jpg,0,0,0,0,1\na.jpg,0,0,0,1,1\n",
            [
                "labels.csv row 3: conflicting rows for 'a.jpg': row 2 says water, row 3 says "
                "cars;water"
            ],
        ),
        (
            'filename,labels\na.jpg,water\nb.jpg,watr;cars\nc.jpg,nothing\nd.jpg,"cars,water"\n'
            'e.jpg,none;water\n',
            [
                "labels.csv row 3: unknown class 'watr' (did you mean 'water'?)",
                "labels.csv row 4: unknown class 'nothing' (write none when no class is "
                "present)",
                "labels.csv row 5: unknown class 'cars,water' (separate classes with ';')",
                "labels.csv row 6: 'none' (no class present) together with classes; keep one "
                "of them",
            ],
        ),
        ("filename,labels\n,water\n", ["labels.csv row 2: empty filename"]),
        (
            "filename;labels\na.jpg;water;cars\n",
            ["labels.csv row 2: has 3 fields, but the header has 2 (quote cells that contain ';')"],
        ),
        ("labels\nwater\n", ["labels.csv row 1: no 'filename' column"]),
        (
            "filename,labels,water,comment\na.jpg,water,1,hi\n",
            [
                "labels.csv row 1: column 'water' is a class column, but the file also has a "
                "'labels' column; use one format (one-hot or list)",
                "labels.csv row 1: unknown column 'comment' (a list CSV has 'filename' and "
                "'labels', and alft's query columns rank, score, cluster, p_<class>)",
            ],
        ),
        (
            "filename,labels,\na.jpg,water,oops\n",
            ["labels.csv row 2: value 'oops' in column 3, which has no name"],
        ),
        # An unclosed quote swallows the rest of the file into one cell.
        (
            'filename,labels\na.jpg,water\nb.jpg,"unclosed\nc.jpg,cars\n',
            [
                "labels.csv row 3: unknown class 'unclosed\\nc.jpg,cars' (project classes: "
                "airplane, bare-soil, buildings, cars, water)"
            ],
        ),
    ],
)
def test_refused_csv(tmp_path, content, details):
    path = write(tmp_path, "labels.csv", content)
    err = refused(path)
    assert err.details == details
    n = len(details)
    assert err.message == (
        f"Label file {path} refused: {n} problem{'s' if n > 1 else ''}; nothing was imported"
    )
    assert "\n" not in err.message


def test_missing_file_and_directory(tmp_path):
    assert refused(tmp_path / "nope.csv").details == ["nope.csv: file not found"]
    (tmp_path / "d.csv").mkdir()
    assert refused(tmp_path / "d.csv").details == ["d.csv: is a directory, not a file"]


def test_invalid_json_names_line_and_column(tmp_path):
    err = refused(write(tmp_path, "x.json", '[{"id": 1,\n "data": }]'))
    assert err.details == ["x.json: is not valid JSON (line 2, column 10: Expecting value)"]


def test_all_problems_are_collected_and_at_most_50_listed(tmp_path):
    body = "".join(f"img{i}.jpg,watr\n" for i in range(120))
    err = refused(write(tmp_path, "many.csv", "filename,labels\n" + body))
    assert "120 problems" in err.message
    assert len(err.details) == 51
    assert err.details[0].startswith("many.csv row 2: unknown class 'watr'")
    assert err.details[-1] == "... and 70 more problems"


def test_forced_formats(tmp_path):
    path = write(tmp_path, "l.csv", "filename,labels\na.jpg,water\n")
    err = refused(path, fmt="onehot")
    assert "l.csv row 1: unknown column 'labels': not a project class" in err.details[0]
    json_path = LS_DIR / "export.json"
    assert "is JSON, not a list CSV" in refused(json_path, fmt="list").details[0]
    with pytest.raises(OptionError):
        read_label_file(path, CLASSES, "xlsx")


def test_bad_project_classes_are_a_caller_bug(tmp_path):
    path = write(tmp_path, "l.csv", "filename,labels\na.jpg,water\n")
    with pytest.raises(ValueError):
        read_label_file(path, [])
    with pytest.raises(ValueError):
        read_label_file(path, ["water", "water"])


# --------------------------------------------------------------------------------------
# match_keys
# --------------------------------------------------------------------------------------

KEYS = {
    "airplane/airplane00.jpg",
    "water/water00.jpg",
    "a/x.jpg",
    "b/x.jpg",
    "x.jpg",
    "deep/a/x.jpg",
    "sp ace/ü.jpg",
}


@pytest.mark.parametrize(
    ("ref", "key"),
    [
        ("airplane/airplane00.jpg", "airplane/airplane00.jpg"),
        ("images/airplane/airplane00.jpg", "airplane/airplane00.jpg"),
        ("/abs/archive/airplane/airplane00.jpg", "airplane/airplane00.jpg"),
        ("C:\\data\\archive\\airplane\\airplane00.jpg", "airplane/airplane00.jpg"),
        ("./airplane/airplane00.jpg", "airplane/airplane00.jpg"),
        ("airplane00.jpg", "airplane/airplane00.jpg"),  # unique file name
        ("/data/local-files/?d=archive/water/water00.jpg", "water/water00.jpg"),
        ("/data/local-files/?d=archive%2Fsp%20ace%2F%C3%BC.jpg", "sp ace/ü.jpg"),
        ("http://localhost:8080/data/local-files/?d=arch/water/water00.jpg", "water/water00.jpg"),
        ("/data/upload/3/1a2b3c4d-airplane00.jpg", "airplane/airplane00.jpg"),
        (
            "https://bucket.s3.amazonaws.com/arch/water/water00.jpg?X-Amz-Signature=ab%2F",
            "water/water00.jpg",
        ),
        ("s3://bucket/arch/water/water00.jpg", "water/water00.jpg"),
        ("gs://bucket/water/water00.jpg", "water/water00.jpg"),
        ("file:///home/u/arch/sp%20ace/%C3%BC.jpg", "sp ace/ü.jpg"),
        # Several keys end the reference: the longest (most specific) one.
        ("/mnt/deep/a/x.jpg", "deep/a/x.jpg"),
        ("/mnt/other/a/x.jpg", "a/x.jpg"),
        ("x.jpg", "x.jpg"),
    ],
)
def test_match_keys_forms(ref, key):
    mapping, problems = match_keys([ref], KEYS)
    assert (mapping, problems) == ({ref: key}, [])


def test_match_keys_problems_in_input_order():
    mapping, problems = match_keys(
        ["nope.jpg", "airplane00.jpg", "other/airplane00.jpg", "sub/a/x.jpg/", "nope.jpg"],
        ["airplane/airplane00.jpg", "bus/a/x.jpg", "car/a/x.jpg"],
    )
    # A differing folder is not a match, even when the file name is unique.
    assert mapping == {"airplane00.jpg": "airplane/airplane00.jpg"}
    assert problems == [
        "'nope.jpg' is not in the project",
        "'other/airplane00.jpg' is not in the project",
        "'sub/a/x.jpg/' is not in the project",
    ]
    _, problems = match_keys(["a/x.jpg"], ["bus/a/x.jpg", "car/a/x.jpg"])
    assert problems == [
        "'a/x.jpg' matches 2 images (bus/a/x.jpg, car/a/x.jpg); give more of its path"
    ]


def test_match_keys_many_keys():
    keys = [f"class{i % 20}/img{i:06d}.tif" for i in range(50_000)]
    refs = [f"/abs/root/{k}" for k in keys[::7]] + [k.split("/")[1] for k in keys[::11]]
    mapping, problems = match_keys(refs, keys)
    assert problems == []
    assert all(mapping[r].endswith(r.rsplit("/", 1)[-1]) for r in refs)


# --------------------------------------------------------------------------------------
# Writing and round trips
# --------------------------------------------------------------------------------------

QUERY = [
    QueryRow("water/water00.jpg", 1, 0.93, 2, [0.1, 0.7, 0.0, 0.5, 0.9]),
    QueryRow("cars/cars00.jpg", 2, 0.81, 0, [0.2, 0.1, 0.3, 0.49, 0.1]),
]


def test_query_csv_columns_and_suggestions(tmp_path):
    path = tmp_path / "query.csv"
    write_query_csv(path, QUERY, CLASSES)
    rows = list(csv.reader(path.open(newline="")))
    assert rows[0] == ["filename", "rank", "score", "cluster", "labels"] + [
        f"p_{c}" for c in CLASSES
    ]
    assert rows[1][:5] == ["water/water00.jpg", "1", "0.93", "2", "bare-soil;cars;water"]
    # p = 0.49 is not suggested; "none" (not an empty cell) so that accepting it is an answer
    assert rows[2][4] == "none"


def test_query_csv_round_trip_gives_the_suggestions(tmp_path):
    path = tmp_path / "query.csv"
    write_query_csv(path, QUERY, CLASSES)
    parsed = read_label_file(path, CLASSES)
    assert parsed.format == "list"
    assert [(r.ref, r.labels, r.where) for r in parsed.rows] == [
        ("water/water00.jpg", vec("bare-soil", "cars", "water"), "row 2"),
        ("cars/cars00.jpg", vec(), "row 3"),
    ]
    assert any("pre-filled" in n for n in parsed.notes)


def test_initial_query_csv_has_no_probabilities_and_imports_nothing_unanswered(tmp_path):
    path = tmp_path / "query.csv"
    write_query_csv(path, [QueryRow("a.jpg", 1, 0.0, -1, None)], CLASSES)
    assert path.read_text().splitlines() == ["filename,rank,score,cluster,labels", "a.jpg,1,0,-1,"]
    parsed = read_label_file(path, CLASSES)
    assert (parsed.rows, parsed.unanswered) == ([], 1)
    assert parsed.notes == []  # no suggestions, so no note about them


def test_edited_query_csv_in_excel_style(tmp_path):
    # A person corrected the labels in a ";" spreadsheet and saved with a BOM and CRLF.
    path = tmp_path / "query.csv"
    write_query_csv(path, QUERY, CLASSES)
    text = path.read_text().replace('"', "")
    lines = [ln.replace(",", ";") for ln in text.splitlines()]
    lines[1] = lines[1].replace("bare-soil;cars;water", '"WATER"')
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    rows = read_label_file(path, CLASSES).rows
    assert [r.labels for r in rows] == [vec("water"), vec()]


def test_label_studio_tasks_structure(tmp_path):
    path = tmp_path / "tasks.json"
    rows = [*QUERY, QueryRow("a b.jpg", 3, float("nan"), -1, None)]
    write_label_studio_tasks(
        path, rows, CLASSES, lambda k: "/data/local-files/?d=arch/" + k, "alft-r2"
    )
    tasks = json.loads(path.read_text())
    assert tasks[0] == {
        "data": {
            "image": "/data/local-files/?d=arch/water/water00.jpg",
            "alft_key": "water/water00.jpg",
            "rank": 1,
            "score": 0.93,
            "cluster": 2,
        },
        "predictions": [
            {
                "model_version": "alft-r2",
                # alft's order, not a confidence: ascending score = rank order (issue 16)
                "score": 1 / 4,
                "result": [
                    {
                        "from_name": "labels",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": ["bare-soil", "cars", "water"]},
                    }
                ],
            }
        ],
    }
    assert tasks[1]["predictions"][0]["result"][0]["value"]["choices"] == []
    assert tasks[2] == {
        "data": {
            "image": "/data/local-files/?d=arch/a b.jpg",
            "alft_key": "a b.jpg",
            "rank": 3,
            "score": None,
            "cluster": -1,
        }
    }


def test_label_studio_tasks_match_the_fixture_import_payload(tmp_path):
    # alft writes what the fixture project was made from (plus its own data fields).
    fixture = json.loads((LS_DIR / "import_tasks.json").read_text())
    path = tmp_path / "tasks.json"
    rows = [QueryRow("images/airplane/airplane00.jpg", 1, 0.5, 0, [0.9, 0.1, 0.1, 0.8, 0.1])]
    write_label_studio_tasks(path, rows, CLASSES, lambda k: k, "alft-r1")
    ours = json.loads(path.read_text())[0]
    assert ours["data"]["image"] == fixture[0]["data"]["image"]
    theirs = fixture[0]["predictions"][0]
    assert ours["predictions"][0]["result"] == theirs["result"]
    assert ours["predictions"][0]["model_version"] == theirs["model_version"]


def test_label_studio_export_of_alft_tasks_reads_back_by_alft_key(tmp_path):
    # Simulate LS: it keeps our data and adds an annotation.
    path = tmp_path / "tasks.json"
    write_label_studio_tasks(path, QUERY, CLASSES, lambda k: "http://h/" + k, "alft-r2")
    tasks = json.loads(path.read_text())
    for i, t in enumerate(tasks, 1):
        t["id"] = i
        t["annotations"] = [ann(i, t["predictions"][0]["result"])]
    parsed = read_tasks(tmp_path, tasks)
    assert [(r.ref, r.labels) for r in parsed.rows] == [
        ("water/water00.jpg", vec("bare-soil", "cars", "water")),
        ("cars/cars00.jpg", vec()),
    ]


def test_label_studio_config_matches_the_fixture_project():
    readme = (LS_DIR / "README.md").read_text()
    config = label_studio_config(CLASSES)
    assert config in readme
    root = ET.fromstring(config)
    assert [c.get("value") for c in root.iter("Choice")] == CLASSES
    assert root.find("Choices").get("choice") == "multiple"


ODD_CLASSES = ['say "hi"', "a&b<c>", "Ünïcode 水", "it's", "tab\there"]


def test_odd_class_names_survive_every_writer(tmp_path):
    root = ET.fromstring(label_studio_config(ODD_CLASSES))
    assert [c.get("value") for c in root.iter("Choice")] == ODD_CLASSES

    probs = [0.9, 0.1, 0.8, 0.6, 0.2]
    write_query_csv(tmp_path / "q.csv", [QueryRow("x.jpg", 1, 1.0, 0, probs)], ODD_CLASSES)
    (row,) = read_label_file(tmp_path / "q.csv", ODD_CLASSES).rows
    assert row.labels == (1, 0, 1, 1, 0)

    write_label_studio_tasks(
        tmp_path / "t.json", [QueryRow("x.jpg", 1, 1.0, 0, probs)], ODD_CLASSES, lambda k: k, "m"
    )
    task_ = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))[0]
    assert task_["predictions"][0]["result"][0]["value"]["choices"] == [
        'say "hi"',
        "Ünïcode 水",
        "it's",
    ]
    task_["id"], task_["annotations"] = 1, [ann(1, task_["predictions"][0]["result"])]
    assert read_tasks(tmp_path, [task_], ODD_CLASSES).rows[0].labels == (1, 0, 1, 1, 0)

    Y = np.eye(5, dtype=np.uint8)
    keys = [f"k{i}.jpg" for i in range(5)]
    for fmt in ("onehot", "list"):
        write_labels_csv(tmp_path / f"{fmt}.csv", keys, Y, ODD_CLASSES, fmt)
        parsed = read_label_file(tmp_path / f"{fmt}.csv", ODD_CLASSES)
        assert parsed.format == fmt
        assert [r.ref for r in parsed.rows] == keys
        assert np.array_equal([r.labels for r in parsed.rows], Y)


@pytest.mark.parametrize("fmt", ["onehot", "list"])
def test_labels_csv_round_trip(tmp_path, fmt):
    rng = np.random.default_rng(0)
    Y = (rng.random((40, 5)) < 0.3).astype(np.uint8)
    keys = [f"c{i % 3}/img{i}.jpg" for i in range(40)]
    path = tmp_path / "labels.csv"
    write_labels_csv(path, keys, Y, CLASSES, fmt)
    parsed = read_label_file(path, CLASSES)
    assert parsed.format == fmt
    assert [r.ref for r in parsed.rows] == keys
    assert np.array_equal(np.array([r.labels for r in parsed.rows]), Y)


def test_writers_refuse_caller_bugs(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_labels_csv(tmp_path / "l.csv", ["a"], np.zeros((2, 5)), CLASSES)
    with pytest.raises(ValueError, match="only 0 and 1"):
        write_labels_csv(tmp_path / "l.csv", ["a"], np.full((1, 5), 2), CLASSES)
    with pytest.raises(ValueError, match="format"):
        write_labels_csv(tmp_path / "l.csv", ["a"], np.zeros((1, 5)), CLASSES, "xml")
    with pytest.raises(ValueError, match="cannot contain"):
        write_query_csv(tmp_path / "q.csv", [], ["a;b"])
    with pytest.raises(ValueError, match="probabilities"):
        write_query_csv(tmp_path / "q.csv", [QueryRow("a", 1, 0, 0, [0.5])], CLASSES)
    assert not list(tmp_path.iterdir())


def test_atomic_write_replaces_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new\r\nline")
    assert path.read_bytes() == b"new\r\nline"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    # Files handed to labelers follow the umask (mkstemp alone would make them 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    def broken_replace(src, dst):
        raise OSError("disk full")

    import alft_cli.atomic as atomic_module

    monkeypatch.setattr(atomic_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "lost")
    assert path.read_bytes() == b"new\r\nline"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
