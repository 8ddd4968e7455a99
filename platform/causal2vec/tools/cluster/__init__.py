"""Ray clusters on this machine, for the demo, the tests and the benches (the jobs and the library never import it).

    nodes.py    one `ray start` (head or worker), isolated from any other Ray here, stopped or killed by its processes
    ray_start.py  `ray start` that waits longer for a slow node to register (a busy machine)
    network.py  Linux network namespaces on a private bridge: each node gets its own network stack and address
    local.py    LocalCluster: a head and worker nodes, each in its own namespace, with a kill and a restart per node
    drills/     node-failure drills: bulk embedding, training and serving across nodes while one node is killed
"""
