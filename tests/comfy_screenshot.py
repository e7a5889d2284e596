"""Make docs/comfyui-nodes.png and workflows/sparke_diversity.json from the real ComfyUI page.

Starts ComfyUI (``comfy_harness.running_server``: the tiny test base directory, plus an empty checkpoint file
so that the loader's list shows its name), opens its page in headless Chromium, loads the API-format workflow
below into the editor (the front end's own ``app.loadApiJson``), saves the editor's workflow (the format a
user drags into ComfyUI) and a screenshot. Usage: python tests/comfy_screenshot.py (from the repository root).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_harness  # noqa: E402
from sparke.comfy.nodes import default_strength  # noqa: E402

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
WORKFLOW = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
    "2": {"class_type": "SparkeBank", "inputs": {"name": "default", "action": "keep",
                                                 "file": "sparke/banks/default.safetensors", "directory": "user",
                                                 "save_after_run": True}},
    "3": {"class_type": "SparkeDiversity", "inputs": {"model": ["1", 0], "strength": default_strength(), "start_percent": 0.0,
                                                      "end_percent": 1.0, "bank": ["2", 0]}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a dog in a park", "clip": ["1", 1]}},
    "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["1", 1]}},
    "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 4}},
    "7": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 0, "steps": 25, "cfg": 7.0,
                                               "sampler_name": "euler", "scheduler": "normal",
                                               "positive": ["4", 0], "negative": ["5", 0],
                                               "latent_image": ["6", 0], "denoise": 1.0}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "sparke"}},
    "10": {"class_type": "SparkeDiversityScore", "inputs": {"images": ["8", 0], "conditioning": ["4", 0]}},
    "11": {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}},
}  # fmt: skip
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1700,1000", "--hide-scrollbars"]  # fmt: skip
# where each node sits in the editor (x, y in canvas pixels): loaders left, SPARKE in the middle, outputs right
LAYOUT = {"1": (20, 40), "2": (20, 280), "6": (20, 560), "3": (410, 40), "4": (410, 280), "5": (410, 540),
          "7": (860, 40), "8": (1250, 40), "9": (1250, 150), "10": (1250, 420), "11": (1250, 640)}  # fmt: skip
# the front end's own calls (LiteGraph.createNode, node.connect, widget values), as its loadApiJson makes them
LOAD = """(async () => {
  const wf = %s, layout = %s, graph = window.app.graph, LG = window.LiteGraph;
  // Front-end 1.27.10 maps model folders to loader nodes, UpscaleModelLoader among them; without torchvision
  // that node (spandrel) is absent here, its entry has no definition, and every model combo widget then
  // fails to build. Drop the entries without a definition (a user's ComfyUI has the node).
  const pinia = document.querySelector("#vue-app").__vue_app__.config.globalProperties.$pinia;
  const models = pinia._s.get("modelToNode");
  if (models) {
    models.registerDefaults();
    models.modelToNodeMap = Object.fromEntries(Object.entries(models.modelToNodeMap)
      .map(([folder, providers]) => [folder, providers.filter(p => p.nodeDef)]));
  }
  graph.clear();
  for (const [id, data] of Object.entries(wf)) {
    const node = LG.createNode(data.class_type);
    if (!node) {
      let why = "";
      try { new LG.registered_node_types[data.class_type](data.class_type); } catch (e) { why = e.stack; }
      throw new Error(`the editor cannot make a ${data.class_type} node: ${why}`);
    }
    node.id = +id;
    graph.add(node);
    node.pos = layout[id];
  }
  for (const [id, data] of Object.entries(wf)) {
    const node = graph.getNodeById(+id);
    for (const [name, value] of Object.entries(data.inputs)) {
      if (Array.isArray(value)) {
        graph.getNodeById(+value[0]).connect(value[1], node, node.inputs.findIndex(i => i.name === name));
      } else {
        const widget = node.widgets.find(w => w.name === name);
        widget.value = value;
      }
    }
  }
  window.app.canvas.ds.offset = [10, 10];
  window.app.canvas.ds.scale = 1.0;
  graph.setDirtyCanvas(true, true);
  return graph._nodes.length;
})()"""


async def _page(ws_url: str) -> tuple[str, str]:
    """(the editor's workflow JSON, a PNG screenshot in base64) of the ComfyUI page behind ``ws_url``."""
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        ids = iter(range(1, 1_000_000))

        async def call(method: str, **params) -> dict:
            i = next(ids)
            await ws.send_json({"id": i, "method": method, "params": params})
            while True:
                message = json.loads((await asyncio.wait_for(ws.receive(), 60)).data)
                if message.get("id") == i:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]

        async def evaluate(expression: str):
            result = await call(
                "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
            )
            if "exceptionDetails" in result:
                raise RuntimeError(f"page: {result['exceptionDetails']}")
            return result["result"].get("value")

        deadline = time.monotonic() + 90
        while True:  # the front end loads (and may reload once) before window.app has a graph
            try:
                if await evaluate("!!(window.app && window.app.graph)"):
                    break
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the ComfyUI page did not start within 90 s")
            await asyncio.sleep(0.5)
        await call(
            "Emulation.setDeviceMetricsOverride", width=1600, height=860, deviceScaleFactor=1, mobile=False
        )
        await asyncio.sleep(3)
        types = sorted({node["class_type"] for node in WORKFLOW.values()})
        missing = await evaluate(
            f"{json.dumps(types)}.filter(t => !(t in window.LiteGraph.registered_node_types))"
        )
        if missing:
            raise RuntimeError(f"node types the page does not know: {missing}")
        count = await evaluate(LOAD % (json.dumps(WORKFLOW), json.dumps(LAYOUT)))
        if count != len(WORKFLOW):
            raise RuntimeError(f"the editor holds {count} nodes, not {len(WORKFLOW)}")
        await asyncio.sleep(3)
        workflow = await evaluate("JSON.stringify(window.app.graph.serialize(), null, 2)")
        shot = (await call("Page.captureScreenshot", format="png"))["data"]
        return workflow, shot


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found (Debian: apt-get install chromium)")
    repo = comfy_harness.REPO
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        comfy_harness.make_base(base)
        (base / "models" / "checkpoints").mkdir(parents=True)
        (base / "models" / "checkpoints" / CHECKPOINT).write_bytes(b"")
        settings = (
            base / "user" / "default" / "comfy.settings.json"
        )  # no first-run template dialog, no minimap
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}))
        with comfy_harness.running_server(base) as (url, _log):
            port = comfy_harness.free_port()
            browser = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}",
                                        f"--remote-debugging-port={port}", url],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        pages = [
                            t
                            for t in comfy_harness.get(f"http://127.0.0.1:{port}/json/list")
                            if t["type"] == "page"
                        ]
                        if pages:
                            break
                    except OSError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("Chromium did not open its debugging port")
                    time.sleep(0.5)
                workflow, shot = asyncio.run(_page(pages[0]["webSocketDebuggerUrl"]))
            finally:
                browser.terminate()
                browser.wait(timeout=20)
    (repo / "workflows").mkdir(exist_ok=True)
    (repo / "workflows" / "sparke_diversity.json").write_text(workflow + "\n")
    (repo / "docs" / "comfyui-nodes.png").write_bytes(base64.b64decode(shot))
    print("wrote workflows/sparke_diversity.json and docs/comfyui-nodes.png")


if __name__ == "__main__":
    main()
