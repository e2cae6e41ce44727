"""Engine test program: one AgentWorkerDeployment whose arguments come from stack config.

Config ``deployment`` is the JSON of the non-secret arguments; the secrets are secret config values.
"""

import json

import pulumi

from infra.ecs.resource import AgentWorkerDeployment

config = pulumi.Config()
args = json.loads(config.require("deployment"))
args["stack"] = pulumi.get_stack()
args["livekit_api_key"] = config.require_secret("livekitApiKey")
args["livekit_api_secret"] = config.require_secret("livekitApiSecret")
args["provider_keys"] = {"OPENAI_API_KEY": config.require_secret("openaiApiKey")}

worker = AgentWorkerDeployment("worker", args)
pulumi.export("service_arn", worker.service_arn)
pulumi.export("task_definition_arn", worker.task_definition_arn)
pulumi.export("image_uri", worker.image_uri)
pulumi.export("secret_arns", worker.secret_arns)
pulumi.export("execution_role_arn", worker.execution_role_arn)
