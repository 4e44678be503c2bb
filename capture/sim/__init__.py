"""capture/sim"""
