"""The frozen teacher: built from its bundle config, loaded with checks that name the file, run beside the student."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR, DynUNet

from custom.emkd import EMKDLoss
from custom.teacher import TeacherStudentNet, first_state_mismatch, load_teacher, teacher_config
from tests.helpers import HIPPOCAMPUS_BUNDLE, TINY_UNETR, error_chain

K = 3
ROI = (16, 16, 16)
STUDENT_TAPS = {"low": "downsamples.0", "high": "bottleneck"}
TEACHER_TAPS = {"low": "encoder2", "high": "decoder5:input"}

pytestmark = pytest.mark.usefixtures("single_thread")


def _student(classes: int = K) -> DynUNet:
    return DynUNet(3, 1, classes, [3] * 4, [1, 2, 2, 2], [2, 2, 2], filters=[2, 4, 8, 8], res_block=True)


def _teacher(feature_size: int = 4) -> UNETR:
    return UNETR(1, K, ROI, feature_size=feature_size, hidden_size=24, mlp_dim=48, num_heads=2, proj_type="perceptron")


@pytest.fixture
def net() -> TeacherStudentNet:
    torch.manual_seed(0)
    return TeacherStudentNet(_student(), _teacher().requires_grad_(False), STUDENT_TAPS, TEACHER_TAPS, 1, ROI)


def test_parameters_and_state_are_the_students_alone(net):
    assert [id(p) for p in net.parameters()] == [id(p) for p in net.student.parameters()]
    assert set(net.state_dict()) == {f"student.{key}" for key in net.student.state_dict()}
    net.double()  # moves follow the module to the teacher
    assert {p.dtype for p in net.teacher.parameters()} == {torch.float64}


def test_training_output_pairs_the_feature_maps_and_the_teacher_gets_no_gradient(net):
    teacher_before = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    net.train()
    assert not net.teacher.training and net.student.training
    x = torch.randn(2, 1, *ROI)
    out = net(x)
    assert list(out["student_features"]) == list(out["teacher_features"]) == ["low", "high"]
    assert out["student_features"]["low"].shape[2:] == out["teacher_features"]["low"].shape[2:] == (8, 8, 8)
    assert out["teacher_features"]["high"].shape[1] == 24  # the ViT map that enters decoder5
    assert not out["teacher_pred"].requires_grad
    label = torch.randint(0, K, (2, 1, *ROI))
    EMKDLoss()(out, label).backward()
    assert all(p.grad is None and not p.requires_grad for p in net.teacher.parameters())
    assert all(p.grad is not None for p in net.student.parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    optimizer.step()
    assert all(torch.equal(v, teacher_before[k]) for k, v in net.teacher.state_dict().items())
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net.student(x))


@pytest.mark.parametrize(
    "role, taps, missing, close",
    [
        ("student", {"low": "downsample.0", "high": "bottleneck"}, "downsample.0", "'downsamples.0'"),
        ("teacher", {"low": "encoder2", "high": "decoder6:input"}, "decoder6", "'decoder5'"),
    ],
)
def test_an_unknown_tap_names_the_module_and_close_matches(role, taps, missing, close):
    student_taps, teacher_taps = (taps, TEACHER_TAPS) if role == "student" else (STUDENT_TAPS, taps)
    with pytest.raises(KeyError) as raised:
        TeacherStudentNet(_student(), _teacher(), student_taps, teacher_taps)
    message = str(raised.value)
    assert f"EMKD {role} tap" in message and f"no submodule named '{missing}'" in message and close in message


def test_networks_that_do_not_fit_together_are_refused():
    with pytest.raises(ValueError, match="same pairs"):
        TeacherStudentNet(_student(), _teacher(), STUDENT_TAPS, {"high": "encoder2", "low": "encoder3"})
    with pytest.raises(ValueError, match="same classes"):
        TeacherStudentNet(_student(classes=K + 1), _teacher(), STUDENT_TAPS, TEACHER_TAPS, 1, ROI)


@pytest.mark.parametrize(
    "found, expected",
    [
        ({"a": torch.zeros(2), "b": torch.zeros(3)}, None),
        ({"a": torch.zeros(2)}, ("b", "missing from the file", 1)),
        ({"a": torch.zeros(4), "b": torch.zeros(3)}, ("a", "shape [4] in the file, [2] in the network", 1)),
        ({"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}, ("c", "in the file, not in the network", 1)),
        ({"b": 1}, ("a", "missing from the file", 2)),
    ],
)
def test_first_state_mismatch(found, expected):
    assert first_state_mismatch({"a": torch.zeros(2), "b": torch.zeros(3)}, found) == expected


def test_load_teacher_freezes_a_fitting_checkpoint_and_names_the_file_otherwise(tmp_path):
    trained = _teacher()
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    teacher = load_teacher(_teacher(), tmp_path / "model.pt")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in teacher.state_dict().items())

    torch.save(_teacher(feature_size=8).state_dict(), tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    cases = {
        tmp_path / "missing.pt": ["missing.pt", "does not exist", "--teacher_ckpt"],
        tmp_path / "other.pt": [
            "other.pt",
            "first mismatching key 'encoder1.layer.conv1.conv.weight' (shape [8, 1, 3, 3, 3] in the file",
        ],
        tmp_path / "list.pt": ["list.pt", "not a model.pt state dict"],
        tmp_path / "text.pt": ["text.pt", "could not be read"],
    }
    for path, parts in cases.items():
        with pytest.raises((FileNotFoundError, ValueError)) as raised:
            load_teacher(_teacher(), path)
        assert all(part in str(raised.value) for part in parts), str(raised.value)
    with pytest.raises(ValueError, match="overwrite"):
        load_teacher(_teacher(), tmp_path / "model.pt", student_ckpt_dir=tmp_path)


def test_teacher_config_builds_the_network_of_the_teachers_own_files(tmp_path):
    overrides = {**TINY_UNETR, "num_classes": 5}
    parser = teacher_config(HIPPOCAMPUS_BUNDLE, ["train.json", "backbone_dynunet.json"], overrides)
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, DynUNet) and network.out_channels == 5
    assert parser.get_parsed_content("encoder_taps")[1] == "downsamples.0"
    with pytest.raises(FileNotFoundError) as raised:
        teacher_config(HIPPOCAMPUS_BUNDLE, ["train.json", "backbone_nope.json"])
    assert "backbone_nope.json" in error_chain(raised.value) and "teacher_configs" in str(raised.value)
