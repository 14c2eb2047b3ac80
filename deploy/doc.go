// Package deploy holds what runs natter in containers (docker/Dockerfile,
// nats/, caddy/, the repository's docker-compose.yml) and the tests that
// run it for real: TestMesh brings the compose mesh up on the machine's
// Docker Engine under a project name of its own, keeps clients chatting
// through the proxy while it kills, cuts off and restarts its parts one at
// a time, and checks that nothing acked is lost (docs/operations.md, the mesh).
//
// Where no Docker daemon answers the container tests skip and say so,
// except under CI=true, where they fail. On a machine that cannot pull
// images, standins/build.sh builds local stand-ins of the public base
// images first (deploy/README.md).
package deploy
