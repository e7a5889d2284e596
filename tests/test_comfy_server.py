"""The node pack in a real ComfyUI server: ``main.py --cpu`` on 127.0.0.1 with a temporary base directory that
holds a tiny SD1.5 model file, this repository as a cloned node pack (a link in ``custom_nodes/``), and the
test's own fixture nodes (``comfy_fixture_nodes``: random conditioning, latents shown as images, and the
scoped torchvision stand-in of ``comfy_harness`` as a prestartup script). The front end is the
comfyui-frontend-package from the package index. Every wait is bounded; the test stops the server itself.
"""

from __future__ import annotations

import inspect
import json
import time

import pytest

import comfy_harness
from sparke.comfy.nodes import default_strength

pytestmark = pytest.mark.skipif(comfy_harness.comfyui_path() is None, reason=comfy_harness.SKIP_REASON)

RUN_TIMEOUT = 180  # seconds for one queued workflow
get, post = comfy_harness.get, comfy_harness.post


def workflow(save_bank: str) -> dict:
    """API-format workflow: tiny UNet -> SPARKE Diversity (with a named bank) -> KSampler -> SaveLatent, and
    the samples -> Diversity score."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd15.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "SparkeBank", "inputs": {"name": "server", "action": "keep", "file": save_bank,
                                                     "directory": "user", "save_after_run": True}},
        "3": {"class_type": "SparkeDiversity", "inputs": {"model": ["1", 0], "strength": default_strength(),
                                                          "start_percent": 0.0, "end_percent": 1.0, "bank": ["2", 0]}},
        "4": {"class_type": "TestConditioning", "inputs": {"seed": 1, "width": 768, "pooled": 0}},
        "5": {"class_type": "TestConditioning", "inputs": {"seed": 2, "width": 768, "pooled": 0}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 0, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "sparke_test"}},
        "9": {"class_type": "LatentAsImage", "inputs": {"samples": ["7", 0]}},
        "10": {"class_type": "SparkeDiversityScore", "inputs": {"images": ["9", 0], "conditioning": ["4", 0]}},
    }  # fmt: skip


def wait_for_history(url: str, prompt_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        entry = get(f"{url}/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.5)
    raise AssertionError(f"prompt {prompt_id} did not finish within {RUN_TIMEOUT} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, base directory, log file) of a running ComfyUI, stopped afterwards."""
    base = tmp_path_factory.mktemp("comfy_base")
    comfy_harness.make_base(base)
    with comfy_harness.running_server(base) as (url, log):
        yield url, base, log


def test_server_lists_the_nodes_and_runs_a_workflow_twice(server):
    from safetensors.torch import load_file

    import sparke

    url, base, log = server
    info = get(f"{url}/object_info")
    for name, display in [("SparkeDiversity", "SPARKE Diversity"), ("SparkeBank", "SPARKE Bank"),
                          ("SparkeDiversityScore", "Diversity score")]:  # fmt: skip
        assert info[name]["display_name"] == display
    strength = info["SparkeDiversity"]["input"]["required"]["strength"][1]["default"]
    assert strength == inspect.signature(sparke.SPARKE).parameters["scale"].default  # the library's scale

    outputs = []
    for _ in range(2):  # the same workflow, the same seed: the second run sees the first run's images
        queued = post(f"{url}/prompt", {"prompt": workflow("sparke/server.safetensors"), "client_id": "test"})
        entry = wait_for_history(url, queued["prompt_id"])
        status = entry["status"]
        assert status["status_str"] == "success", f"{status}\n{log.read_text()[-4000:]}"
        outputs.append(entry["outputs"])
    latents = []
    for out in outputs:
        (saved,) = out["8"]["latents"]
        latents.append(load_file(base / "output" / saved["subfolder"] / saved["filename"])["latent_tensor"])
        (text,) = out["10"]["text"]
        assert text.startswith("2 images (colour grid features): Vendi ")
    assert latents[0].shape == (2, 4, 8, 8)
    assert not latents[0].equal(latents[1])
    bank = sparke.AutoBank.load(base / "user" / "sparke" / "server.safetensors")  # saved by the node
    assert len(bank) == 4


def test_server_refuses_a_bank_file_outside_its_directories(server):
    url, base, log = server
    bad = workflow("../escape.safetensors")
    queued = post(f"{url}/prompt", {"prompt": bad, "client_id": "test"})
    status = wait_for_history(url, queued["prompt_id"])["status"]
    assert status["status_str"] == "error"
    errors = [m[1] for m in status["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "SparkeBank"
    message = errors[0]["exception_message"]
    assert "leaves the directory" in message and "\n" not in message.strip()
    assert not (base / "escape.safetensors").exists()


def test_the_workflow_file_uses_only_nodes_the_server_knows(server):
    url, _, _ = server
    info = get(f"{url}/object_info")
    saved = json.loads((comfy_harness.REPO / "workflows" / "sparke_diversity.json").read_text())
    types = {node["type"] for node in saved["nodes"]}
    assert {"SparkeDiversity", "SparkeBank", "SparkeDiversityScore", "KSampler"} <= types
    assert types <= set(info)
    diversity = next(node for node in saved["nodes"] if node["type"] == "SparkeDiversity")
    assert diversity["widgets_values"][0] == default_strength()
    assert len(saved["links"]) == 14
