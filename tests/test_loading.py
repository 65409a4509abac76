"""What loading a model costs a command: the modules PyTorch imports, and initial values that are never used."""

import math
import subprocess
import sys

import torch
from torch import nn


def test_loading_a_model_and_inverting_never_imports_dynamo_or_sympy():
    # Importing torch._dynamo and SymPy took about 1 s of every command's start (`invert` on one photo: 2.4-3.1 ->
    # 2.0-2.1 s). Loading builds modules on the meta device, where arithmetic and randn run PyTorch's Python meta
    # kernels, which import them: the constructors initialise through models.init, and a stopwatch's laps leave
    # compiled graphs only once Dynamo is loaded.
    code = ("import sys, torch\n"
            "from hyperinverter.pipeline import InversionPipeline\n"
            "pipe = InversionPipeline.from_pretrained('faces-64', device='cpu')\n"
            "for method in pipe.available_methods():\n"
            "    pipe.inverter(method)\n"
            "pipe.invert(torch.zeros(1, 3, 64, 64))\n"
            "from hyperinverter.models.inception import FIDInceptionV3\n"  # as load_fid_inception builds it (evaluate)
            "with torch.device('meta'):\n"
            "    FIDInceptionV3()\n"
            "print(sorted(pipe.available_methods()), 'torch._dynamo' in sys.modules or 'sympy' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip().endswith("] False"), done.stdout
    assert "hyperstyle" in done.stdout and "e2style" in done.stdout  # every network of the bundle was built


def test_initial_values_are_torch_s_and_cost_nothing_on_the_meta_device():
    from hyperinverter.models import init

    torch.manual_seed(0)
    expected = [torch.randn(64, 300) / 40, torch.randn(64, 300) * 0.1, nn.init.kaiming_normal_(torch.empty(64, 300))]
    torch.manual_seed(0)
    made = [init.randn(64, 300, over=40), init.randn(64, 300, times=0.1), init.randn(64, 300, times=math.sqrt(2 / 300))]
    assert all(torch.equal(a, b) for a, b in zip(made, expected))  # bit for bit: trainings replay as before
    with torch.device("meta"):
        assert init.randn(3, 4, over=2.0).is_meta and init.randn(3, 4, over=2.0).shape == (3, 4)
