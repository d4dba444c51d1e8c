"""meshcontrol: the control plane of the mesh (API, store, registry, push).

Its rooms arrive with their issues; see DESIGN section 4.
"""
