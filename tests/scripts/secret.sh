#!/bin/bash
# Prints the deploy token from its environment, a Slack-token-shaped string and a short
# secret, among ordinary lines.
echo "starting deploy"
echo "token is $DEPLOY_TOKEN, really"
echo "slack xoxb-123456789012-abcdefghijklmnop"
echo "pin ${PIN:-}"
echo "done"
