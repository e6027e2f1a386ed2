"""cluster.yaml is accepted by the Ray 2.60 cluster launcher's own checks and keeps the project's invariants."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
AUTH_MODE = re.compile(r"\bRAY_AUTH_MODE=(\w+)")


@pytest.fixture()
def cfg() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _ray_start(commands: list[str]) -> list[str]:
    starts = [c for c in commands if "ray start" in c]
    assert starts, f"no `ray start` in {commands}"
    return starts


def test_matches_ray_schema(cfg):
    jsonschema.validate(cfg, SCHEMA)


def test_launcher_validation(cfg):
    """What `ray up` runs before touching the cloud: provider defaults merged in, then validated."""
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_misspelt_top_level_key_rejected(cfg):
    cfg["avaliable_node_types"] = cfg.pop("available_node_types")
    with pytest.raises(jsonschema.ValidationError, match="avaliable_node_types"):
        jsonschema.validate(cfg, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


def test_misspelt_node_type_key_rejected(cfg):
    worker = next(n for n in cfg["available_node_types"] if n != cfg["head_node_type"])
    node = cfg["available_node_types"][worker]
    node["min_wokers"] = node.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_wokers"):
        jsonschema.validate(cfg, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


def test_node_types(cfg):
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["resources"]
    assert head["GPU"] == 0 and head["TRAIN_DRIVER"] >= 1
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    assert not any("TRAIN_DRIVER" in t["resources"] for t in workers.values()), "drivers belong on the head"
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    cpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0]
    assert gpu and all(t["resources"]["CPU"] > 0 for t in gpu)
    assert all(t.get("min_workers", 0) == 0 for t in cpu)


def test_start_commands_form_a_cluster(cfg):
    head = " ".join(_ray_start(cfg["head_start_ray_commands"]))
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert all("--address=$RAY_HEAD_IP:" in c for c in _ray_start(cfg["worker_start_ray_commands"]))


def test_dashboard_not_public(cfg):
    hosts = re.findall(r"--dashboard-host[= ](\S+)", " ".join(_ray_start(cfg["head_start_ray_commands"])))
    assert hosts in (["127.0.0.1"], ["localhost"]), hosts


def test_setup_installs_synced_repo(cfg):
    synced = [remote for remote, local in cfg["file_mounts"].items() if local == "."]
    assert len(synced) == 1, "the repository must be synced to one remote folder"
    prepared = prepare_config(copy.deepcopy(cfg))
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [c for c in prepared[key] if re.search(r"pip install .*-r requirements\.txt", c)]
        assert installs and all(f"cd {synced[0]}" in c for c in installs), (key, prepared[key])


def test_requirements_pin_this_ray(cfg):
    """Nodes install the Ray that validated this file, with the extras the Jobs CLI and Train need."""
    pins = re.findall(r"^ray\[([\w,]+)\]==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert len(pins) == 1
    extras, version = pins[0]
    assert version == ray.__version__
    assert {"default", "train", "tune", "data"} <= set(extras.split(","))


def test_auth_mode_identical_everywhere(cfg):
    starts = _ray_start(cfg["head_start_ray_commands"]) + _ray_start(cfg["worker_start_ray_commands"])
    per_start = [AUTH_MODE.findall(c) for c in starts]
    assert all(len(m) == 1 for m in per_start), f"every `ray start` needs exactly one RAY_AUTH_MODE: {starts}"
    modes = {m[0] for m in per_start} | set(AUTH_MODE.findall(" ".join(cfg.get("setup_commands", []))))
    assert len(modes) == 1, modes
    if modes == {"token"}:
        assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token", "every node needs the token"


def test_on_prem_recipe(cfg):
    """The header's switch to `provider.type: local` gives a config the launcher accepts."""
    cfg["provider"] = {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]}
    cfg["auth"]["ssh_private_key"] = "~/.ssh/id_ed25519"
    for key in ("available_node_types", "head_node_type", "head_setup_commands"):
        del cfg[key]
    validate_config(prepare_config(cfg))
