"""How the Faust workers log in to a secure Kafka (aiokafka under Faust).

`faust_credentials(kafka)` is None in plaintext mode; in secure mode it is SCRAM-SHA-512
over TLS as the stream principal, trusting the pipeline's CA with hostname checks.
Faust's SASLCredentials without an ssl_context silently stays SASL_PLAINTEXT: the
context is always given here, so the workers never send the password in clear.
"""

from __future__ import annotations

import faust
from aiokafka.helpers import create_ssl_context

from infra.settings import KafkaSettings


def faust_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    auth = kafka.auth
    if auth is None:
        return None
    ssl_context = create_ssl_context(cafile=str(auth.ca_file))
    return faust.SASLCredentials(
        username=auth.principal,
        password=auth.secret(),
        mechanism=auth.mechanism,
        ssl_context=ssl_context,
    )
