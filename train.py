"""Train a model: python train.py --config=configs/NAME.py[:ARG] --workdir=DIR [--config.a.b=v].

Re-running with the same workdir resumes from its newest readable checkpoint.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

import cli
from training import trainer
from workdir import checkpoint
from workdir import lock as workdir_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and plots go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    cli.fail(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logging(sys.argv)
  cli.maybe_initialize_distributed()
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, checkpoint.CheckpointError, trainer.NonFiniteLossError,
          workdir_lib.WorkdirInUseError) as e:
    cli.fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags('config', config_file=True))
