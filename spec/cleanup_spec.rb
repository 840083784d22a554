# frozen_string_literal: true

# The renewer's clean-up of locks left by failed requests (a take that timed
# out, a release that failed): it removes the token when it is there - also
# when it lands late - and never touches someone else's lock.
RSpec.describe "clean-up of locks left by failed requests" do
  def hold_for(id, token)
    config = MegaMutex.configuration
    MegaMutex::Lock::Hold.new(id, key_for(id), token, MegaMutex.pool, config.lock_ttl, config)
  end

  def store(id, token)
    key = key_for(id)
    memcached.command("set #{key} 0 60 #{token.bytesize}\r\n#{token}")
  end

  it "removes a lock the failed request left behind" do
    store("left", "tok-left")
    MegaMutex::Renewer.current.release_later(hold_for("left", "tok-left"))
    wait_for(within: 5, message: "the left-over lock to be removed") { MegaMutex.get_current_lock("left").nil? }
  end

  it "removes one that lands late, more than a second after the server first answered without it" do
    MegaMutex::Renewer.current.release_later(hold_for("late", "tok-late"))
    deadline = monotonic + 1.5
    sleep 0.05 while monotonic < deadline # the server keeps answering "nobody holds it"
    store("late", "tok-late")
    wait_for(within: 5, message: "the late lock to be removed") { MegaMutex.get_current_lock("late").nil? }
  end

  it "removes one that lands late also when the scheduler has parked (no lock taken for a while)" do
    # With IDLE_PARK 0 the scheduler sleeps until signalled as soon as nothing
    # is due: the lane's "look again in a moment" must wake it.
    stub_const("MegaMutex::Renewer::IDLE_PARK", 0.0)
    MegaMutex::Renewer.current.release_later(hold_for("parked", "tok-parked"))
    deadline = monotonic + 1.5
    sleep 0.05 while monotonic < deadline
    store("parked", "tok-parked")
    wait_for(within: 5, message: "the late lock to be removed") { MegaMutex.get_current_lock("parked").nil? }
  end

  it "leaves someone else's lock alone" do
    store("other", "tok-someone-else")
    MegaMutex::Renewer.current.release_later(hold_for("other", "tok-mine"))
    store("probe", "tok-probe")
    MegaMutex::Renewer.current.release_later(hold_for("probe", "tok-probe"))
    # the renewer has looked at both once the probe is gone
    wait_for(within: 5, message: "the probe to be removed") { MegaMutex.get_current_lock("probe").nil? }
    expect(MegaMutex.get_current_lock("other")).to eq("tok-someone-else")
  end
end
