import re

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from helpers import output_images

from predict import SCHEDULERS as SCHEMA_CHOICES
from sdcog.request.schedulers import SCHEDULERS, check, make_scheduler

SD15_CONFIG = dict(PNDMScheduler(beta_schedule="scaled_linear", steps_offset=1).config)


def test_schema_choices_are_the_registry():
    assert SCHEMA_CHOICES == list(SCHEDULERS)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_builds_from_the_model_config_and_sets_timesteps(name):
    scheduler = make_scheduler(name, SD15_CONFIG)
    assert isinstance(scheduler, SCHEDULERS[name][0])
    assert scheduler.config.beta_schedule == "scaled_linear"
    scheduler.set_timesteps(5)
    assert len(scheduler.timesteps) >= 5


def test_karras_option_is_fresh_each_time():
    karras = make_scheduler("KarrasDPM", SD15_CONFIG)
    plain = make_scheduler("DPMSolverMultistep", SD15_CONFIG)
    assert karras.config.use_karras_sigmas is True
    assert isinstance(plain, DPMSolverMultistepScheduler)
    assert plain.config.use_karras_sigmas is False
    assert "use_karras_sigmas" not in SD15_CONFIG


def test_pndm_runs_few_steps_from_a_config_without_its_options():
    sdxl_config = dict(EulerDiscreteScheduler(steps_offset=1, timestep_spacing="leading").config)
    scheduler = make_scheduler("PNDM", sdxl_config)
    scheduler.set_timesteps(3)
    assert len(scheduler.timesteps) >= 3


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="scheduler: 'Nope' is not one of DDIM, DDPM"):
        make_scheduler("Nope", SD15_CONFIG)


def test_automatic1111_names_are_aliases_of_ours():
    import predict
    from sdcog.request.request import Request
    from sdcog.request.schedulers import A1111_NAMES, SCHEDULERS, canonical

    assert predict.A1111_SCHEDULERS == list(A1111_NAMES)
    assert set(A1111_NAMES.values()) <= set(SCHEDULERS)
    assert canonical("Euler a") == "K_EULER_ANCESTRAL" and canonical("DDIM") == "DDIM"
    assert Request.from_inputs({"prompt": "x", "scheduler": "DPM++ 2M Karras"}).scheduler == (
        "KarrasDPM"
    )


def test_an_automatic1111_name_through_cogs_server(sd_server):
    small = {"prompt": "x", "num_inference_steps": 3, "width": 128, "height": 128, "seed": 4}
    ours = sd_server.predict(**small, scheduler="K_EULER_ANCESTRAL")
    theirs = sd_server.predict(**small, scheduler="Euler a")
    assert theirs["output"] == ours["output"] and "K_EULER_ANCESTRAL" in theirs["logs"]
    assert sd_server.post(small | {"scheduler": "Euler b"}).status_code == 422


def test_trailing_spacing_starts_one_step_at_the_last_timestep():
    """SDXL-Turbo's 1-step sampling: with leading spacing the one step is at timestep 0
    (no noise removed at all), with trailing at 999."""
    import predict
    from sdcog.request.schedulers import TIMESTEP_SPACINGS

    assert predict.TIMESTEP_SPACINGS == TIMESTEP_SPACINGS
    firsts = {}
    for spacing in ("default", "trailing"):
        scheduler = make_scheduler("K_EULER_ANCESTRAL", SD15_CONFIG, spacing)
        scheduler.set_timesteps(1)
        firsts[spacing] = int(scheduler.timesteps[0])
    assert firsts == {"default": 0, "trailing": 999}
    assert make_scheduler("DDIM", SD15_CONFIG).config.timestep_spacing == "leading"  # untouched


@pytest.mark.parametrize(
    ("name", "spacing", "steps", "message"),
    [
        ("IPNDM", "trailing", 4, "timestep_spacing: IPNDM has no timestep spacing"),
        ("LCM", "default", 51, "num_inference_steps: LCM takes at most 50 steps"),
    ],
)
def test_what_a_scheduler_cannot_do_is_refused_by_name(name, spacing, steps, message):
    with pytest.raises(ValueError, match=message):
        check(name, spacing, steps)
    check(name, "default", 4)  # the same scheduler otherwise


def test_a1111s_sde_samplers_are_diffusers_exact_equivalents():
    from diffusers import DPMSolverSDEScheduler

    from sdcog.request.schedulers import canonical

    two = make_scheduler(canonical("DPM++ 2M SDE"), SD15_CONFIG)
    three = make_scheduler(canonical("DPM++ 3M SDE"), SD15_CONFIG)
    assert (two.config.algorithm_type, two.config.solver_order) == ("sde-dpmsolver++", 2)
    assert (three.config.algorithm_type, three.config.solver_order) == ("sde-dpmsolver++", 3)
    assert isinstance(make_scheduler(canonical("DPM++ SDE"), SD15_CONFIG), DPMSolverSDEScheduler)


@pytest.mark.parametrize(
    "schedule, option, value",
    [("Karras", "use_karras_sigmas", True), ("Exponential", "use_exponential_sigmas", True),
     ("Beta", "use_beta_sigmas", True), ("SGM Uniform", "timestep_spacing", "trailing")],
)  # fmt: skip
def test_each_schedule_type_is_diffusers_sigma_option(schedule, option, value):
    scheduler = make_scheduler("K_EULER", SD15_CONFIG, schedule=schedule)
    assert scheduler.config[option] == value
    plain = make_scheduler("K_EULER", SD15_CONFIG)
    scheduler.set_timesteps(10), plain.set_timesteps(10)
    assert not torch.equal(scheduler.sigmas, plain.sigmas)  # the noise levels differ
    assert make_scheduler("K_EULER", SD15_CONFIG).config[option] != value  # nothing leaks


def test_schedule_types_a_scheduler_cannot_take_are_refused_naming_it():
    with pytest.raises(ValueError, match="^schedule: DDIM has no Karras schedule; use Automatic"):
        check("DDIM", "default", 10, "Karras")
    with pytest.raises(ValueError, match="^schedule: KarrasDPM is Karras already"):
        check("KarrasDPM", "default", 10, "Exponential")
    with pytest.raises(ValueError, match="^schedule: SGM Uniform is trailing timestep spacing"):
        check("K_EULER", "leading", 10, "SGM Uniform")
    check("DPMSolverMultistepSDE", "default", 10, "Karras")


@pytest.mark.parametrize("name, nearest", [("DPM++ 2S a", "DPMSolverSinglestep"),
                                           ("DPM adaptive", "DPMSolverMultistep"),
                                           ("Restart", "K_EULER")])  # fmt: skip
def test_a1111_samplers_diffusers_cannot_run_are_refused_with_the_nearest(name, nearest):
    from sdcog.request.schedulers import canonical

    with pytest.raises(
        ValueError, match=f"^scheduler: {re.escape(name)} .*nearest here is {nearest}"
    ):
        canonical(name)


def test_the_schema_offers_every_schedule_type():
    import predict
    from sdcog.request.schedulers import SCHEDULES

    assert predict.SCHEDULES == list(SCHEDULES)


def test_dpm_sde_and_a_schedule_through_cogs_server(sd_server):
    small = {"prompt": "x", "num_inference_steps": 3, "width": 128, "height": 128, "seed": 4}
    plain = sd_server.predict(**small, scheduler="DPM++ 2M SDE")
    karras = sd_server.predict(**small, scheduler="DPM++ 2M SDE", schedule="Karras")
    assert output_images(plain) and output_images(karras)
    assert plain["output"] != karras["output"]
    assert output_images(sd_server.predict(**small, scheduler="DPM++ SDE"))
    assert sd_server.predict(**small, scheduler="DPM++ 2M SDE")["output"] == plain["output"]
