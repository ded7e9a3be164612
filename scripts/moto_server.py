"""moto's server as the local stack runs it, with one fix to its SQS model.

moto 5.2.5 deletes a message by rebuilding the queue's message list and assigning it
back, without the lock that SendMessage appends under. A message sent while another is
being deleted can land in the old list after the rebuild has passed it, and is then gone:
its task stays RUNNABLE with nothing in the queue. Real SQS has no such window. Here a
delete takes the same lock (a reentrant one) for the whole rebuild.

Run with the venv's python: `python moto_server.py -H 127.0.0.1 -p PORT`.
"""

import sys

from moto.server import main
from moto.sqs import models

_delete_message = models.Queue.delete_message


def _delete_message_locked(self, receipt_handle):
    with self._messages_lock:
        return _delete_message(self, receipt_handle)


models.Queue.delete_message = _delete_message_locked

if __name__ == "__main__":
    sys.exit(main())
