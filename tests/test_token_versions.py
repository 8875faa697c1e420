"""Per-token policy versions: recorded per model token, carried over the wire, used for staleness."""

import numpy as np

from agentic.core import Completion, Trajectory
from agentic.learner import batching
from agentic.rollout.episode import EpisodeRecord
from agentic.transport import codec
from agentic.transport.queue import group_version


def test_episode_records_each_model_tokens_version():
    rec = EpisodeRecord()
    rec.add_context([1, 2, 3])
    rec.add_turn(Completion(token_ids=(4, 5), logprobs=(-0.1, -0.2), finish_reason="stop", weight_version=3), 2)
    rec.add_context([6])
    rec.add_turn(Completion(token_ids=(7, 8, 9), logprobs=(-0.3,) * 3, finish_reason="stop", weight_version=4), 3)
    tr = rec.trajectory(task={"id": "t"}, group_id="g", env_metrics={})
    assert tr.token_versions.tolist() == [-1, -1, -1, 3, 3, -1, 4, 4, 4]
    assert tr.policy_version == tr.oldest_version == 3


def _traj(versions, policy_version):
    n = len(versions)
    mask = (np.asarray(versions) >= 0).astype(np.int8)
    return Trajectory(tokens=np.arange(n), loss_mask=mask, behavior_logprobs=-0.5 * mask, reward=1.0, group_id="g",
                      policy_version=policy_version, prompt_len=2, token_versions=np.asarray(versions))


def test_oldest_token_version_drives_staleness_and_the_batch():
    # a turn that started under version 5 and was continued under 6 after a mid-turn weight swap
    tr = _traj([-1, -1, 5, 5, 6, 6, 6], policy_version=6)
    assert tr.oldest_version == 5
    assert group_version([tr, _traj([-1, -1, 6, 6], 6)]) == 5  # the queue's staleness filter
    back = codec.trajectory_from_proto(codec.trajectory_to_proto(tr))
    assert back.token_versions.tolist() == tr.token_versions.tolist()
    ep = batching.make_episodes([tr, _traj([-1, 7, 7], 7)], 8)
    # prediction positions: targets are tokens[1:]
    assert ep.token_versions[0, :6].tolist() == [-1, 5, 5, 6, 6, 6] and ep.versions.tolist() == [5, 7]
    assert ep.token_versions[1, :2].tolist() == [7, 7] and (ep.token_versions[:, 6:] == -1).all()
    # no per-token versions: every model token gets the trajectory's version
    plain = Trajectory(tokens=np.arange(4), loss_mask=np.array([0, 1, 1, 0], np.int8), behavior_logprobs=np.zeros(4),
                       reward=0.0, group_id="h", policy_version=2, prompt_len=1)
    assert plain.oldest_version == 2
    assert batching.make_episodes([plain], 4).token_versions[0].tolist() == [2, 2, -1, -1]
