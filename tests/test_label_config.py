"""Labeling configs are read with an XML parser: label names as Label Studio sees them, and a
malformed config stops with a message naming the problem (not a silently empty label set)."""

from __future__ import annotations

import pytest

from sedna_sam.errors import InputError
from sedna_sam.labels import LabelSet, labeling_config_xml
from sedna_sam.labelstudio.client import push_tasks
from sedna_sam.labelstudio.label_config import config_labels, controls_from_config


def test_config_labels_reads_every_label_value():
    assert config_labels(labeling_config_xml(LabelSet.from_names(["road", "car"]))) == {"road", "car"}
    config = """<View>
      <Image name="image" value="$image"/>
      <PolygonLabels name="label" toName="image">
        <Label background="#804080" value="road &amp; lane"/>
        <Label value='single quoted'/>
        <Label
            value="over lines"/>
        <Label background="#000"/>
      </PolygonLabels>
      <!-- <Label value="commented out"/> -->
      <Choices name="c" toName="image"><Choice value="not a label"/></Choices>
    </View>"""
    assert config_labels(config) == {"road & lane", "single quoted", "over lines"}
    assert config_labels("") == set()


@pytest.mark.parametrize(
    "config, problem",
    [
        ('<View><PolygonLabels name="label" toName="image"><Label value="road"></View>', "mismatched tag"),
        ('<View><Label value="road></View>', "not well-formed"),
        ("road, car", "syntax error"),
    ],
)
def test_a_malformed_config_names_the_problem(config, problem):
    with pytest.raises(InputError, match=f"labeling config is not valid XML: {problem}.*line 1, column"):
        config_labels(config)
    with pytest.raises(InputError, match=f"labeling config is not valid XML: {problem}"):
        controls_from_config(config)


def test_push_names_the_project_whose_config_is_malformed():
    project = {"id": 7, "title": "broken", "label_config": "<View><Label value='road'></View>"}

    class NoCalls:  # the config is checked before Label Studio is asked anything
        def __getattr__(self, name):
            raise AssertionError(f"unexpected call {name}")

    with pytest.raises(InputError, match=r"project 7 \('broken'\): its labeling config is not valid XML"):
        push_tasks(NoCalls(), project, [{"data": {"image": "x.png"}}])  # type: ignore[arg-type]
