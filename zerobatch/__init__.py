"""zerobatch's shared contract: the wire protocol, the error tree and the configuration.

`api/`, `broker/` and `worker/` each import from here and never from each other, so this
package is the only thing the three processes agree on. It must stay light: no torch, no
falcon, nothing that a broker or a front end should not pay for at import time.
"""

__version__ = "0.1.0"
SERVER_NAME = "zerobatch"
