"""PipelineConfig <-> TOML: round trips, generic dataclass fields, refusals, `spt config`."""

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pytest

from spt import _toml
from spt.cli import main
from spt.config import PipelineConfig, build_dataclass
from spt.errors import SptInputError

PIPELINES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.toml"))


@dataclass(frozen=True)
class _Inner:
    """Nested parameters.

    Attributes
    ----------
    gain : float or None
        A gain.
    """

    gain: float | None = None
    mode: str = "auto"


@dataclass(frozen=True)
class _Section:
    """A section with every kind of field a stage config may grow.

    Attributes
    ----------
    count : int
        Whole number.
    scale, offset : float
        Two numbers.
    """

    count: int = 3
    scale: float = 1.5
    offset: float = 0.0
    flag: bool = False
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[float, float] = (0.5, 1.0)
    maybe: int | None = None
    inner: _Inner = field(default_factory=_Inner)


def test_defaults_round_trip_through_toml_with_and_without_comments():
    config = PipelineConfig()
    for text in (config.to_toml(), config.to_toml(comments=True)):
        assert PipelineConfig.from_dict(tomllib.loads(text)) == config
    assert PipelineConfig.from_dict(config.to_dict()) == config


def test_changed_values_round_trip_and_change_the_digest(tmp_path):
    base = PipelineConfig()
    changed = base.with_overrides(["movie.pixel_size_um=0.16", "output.table_format=parquet"])
    assert changed.movie.pixel_size_um == 0.16 and changed.output.table_format == "parquet"
    path = tmp_path / "c.toml"
    path.write_text(changed.to_toml(comments=True))
    assert PipelineConfig.from_toml(path) == changed
    assert changed.digest() != base.digest()
    assert PipelineConfig().digest() == base.digest()


def test_commented_toml_documents_every_parameter():
    text = PipelineConfig().to_toml(comments=True)
    assert "# pixel_size_um =" in text  # unset (None) parameters are listed, commented out
    assert "Pixel size in micrometres" in text  # descriptions come from the docstrings
    for section in fields(PipelineConfig):
        assert f"[{section.name}]" in text
        for f in fields(getattr(PipelineConfig(), section.name)):
            assert f"{f.name} =" in text, f"{section.name}.{f.name} missing"


def test_generic_fields_are_converted_by_their_type():
    data = {
        "count": 7,
        "scale": 2,  # TOML int for a float field becomes a float
        "flag": True,
        "name": "y",
        "sizes": [4, 5, 6],
        "pair": [1, 2],
        "maybe": 3,
        "inner": {"gain": 300, "mode": "manual"},
    }
    section = build_dataclass(_Section, "s", data, "test.toml")
    assert section == _Section(
        count=7,
        scale=2.0,
        flag=True,
        name="y",
        sizes=(4, 5, 6),
        pair=(1.0, 2.0),
        maybe=3,
        inner=_Inner(gain=300.0, mode="manual"),
    )
    assert isinstance(section.scale, float) and isinstance(section.pair[0], float)
    # Non-finite numbers: TOML writes inf; JSON (provenance files) holds them as strings.
    assert build_dataclass(_Section, "s", {"scale": "inf", "offset": "-inf"}, None).offset < -1e308
    assert tomllib.loads("x = " + _toml.value_to_toml(float("inf")))["x"] == float("inf")


@pytest.mark.parametrize(
    "data, words",
    [
        ({"count": 2.5}, ["s.count", "whole number"]),
        ({"count": True}, ["s.count"]),
        ({"scale": "big"}, ["s.scale", "number"]),
        ({"flag": 1}, ["s.flag", "true or false"]),
        ({"name": 3}, ["s.name", "string"]),
        ({"pair": [1, 2, 3]}, ["s.pair", "2 values"]),
        ({"sizes": 4}, ["s.sizes", "list"]),
        ({"inner": {"gain": "x"}}, ["s.inner.gain"]),
        ({"inner": {"colour": 1}}, ["colour", "[s.inner]"]),
        ({"typo": 1}, ["typo", "known: count"]),
    ],
)
def test_bad_values_are_refused_naming_file_and_key(data, words):
    with pytest.raises(SptInputError) as info:
        build_dataclass(_Section, "s", data, "test.toml")
    message = str(info.value)
    assert message.startswith("test.toml:")
    for word in words:
        assert word in message


def test_from_toml_refuses_unknown_sections_invalid_toml_and_bad_values(tmp_path):
    cases = {
        "section": ("[detekt]\nthreshold = 4\n", "detekt"),
        "syntax": ("[detect\n", "not valid TOML"),
        "validation": ("[output]\ntable_format = 'xlsx'\n", "table_format"),
        "chunk": ("[movie]\nchunk_frames = 0\n", "chunk_frames"),
    }
    for name, (text, word) in cases.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        with pytest.raises(SptInputError) as info:
            PipelineConfig.from_toml(path)
        assert str(path) in str(info.value) and word in str(info.value), name
    with pytest.raises(SptInputError, match="not found"):
        PipelineConfig.from_toml(tmp_path / "missing.toml")


def test_set_overrides_parse_toml_values_and_refuse_bad_keys():
    config = PipelineConfig().with_overrides(["detect.threshold = 4", "link.max_gap_frames=9"])
    assert config.detect.threshold == 4.0 and config.link.max_gap_frames == 9
    for bad in ("threshold=4", "nosuch.key=1", "detect.nosuch=1"):
        with pytest.raises(SptInputError, match="--set"):
            PipelineConfig().with_overrides([bad])


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_example_pipelines_load_and_differ_from_the_defaults(path):
    config = PipelineConfig.from_toml(path)
    assert config != PipelineConfig()
    # Every key written in the file is the value the configuration holds.
    for section, values in tomllib.loads(path.read_text()).items():
        for key, value in values.items():
            held = getattr(getattr(config, section), key)
            assert held == (tuple(value) if isinstance(value, list) else value), (section, key)


def test_examples_cover_in_vivo_and_in_vitro():
    assert {"in_vivo_30fps.toml", "in_vitro_cells.toml"} <= {p.name for p in PIPELINES}


def test_spt_config_show_prints_the_effective_configuration(capsys, tmp_path):
    assert main(["config", "--show"]) == 0
    assert PipelineConfig.from_dict(tomllib.loads(capsys.readouterr().out)) == PipelineConfig()
    base = tmp_path / "base.toml"
    base.write_text("[link]\nmax_gap_frames = 8\n")
    assert main(["config", "--show", "--config", str(base), "--set", "detect.threshold=3"]) == 0
    shown = PipelineConfig.from_dict(tomllib.loads(capsys.readouterr().out))
    expected = PipelineConfig()
    expected = replace(
        expected,
        link=replace(expected.link, max_gap_frames=8),
        detect=replace(expected.detect, threshold=3.0),
    )
    assert shown == expected


def test_spt_config_write_creates_a_file_and_will_not_overwrite(tmp_path, capsys):
    path = tmp_path / "my.toml"
    assert main(["config", "--write", str(path), "--set", "output.table_format=parquet"]) == 0
    assert PipelineConfig.from_toml(path).output.table_format == "parquet"
    assert main(["config", "--write", str(path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert PipelineConfig.from_toml(path).output.table_format == "parquet"
    assert main(["config", "--write", str(path), "--force"]) == 0
    assert PipelineConfig.from_toml(path) == PipelineConfig()
