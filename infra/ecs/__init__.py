"""Agent worker deployments on AWS ECS Fargate as a Pulumi dynamic resource.

Import the resource from ``infra.ecs.resource`` and its arguments from ``infra.ecs.args``. This package
and its modules have no import side effects: the dynamic-provider process re-imports
``infra.ecs.provider`` by path to run the provider.
"""
